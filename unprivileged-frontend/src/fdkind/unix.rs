//! Open file descriptions of UNIX domain sockets (see unix(7)).
//!
//! **Dump** works on criu's own duplicate of a socket. What the socket API
//! does not tell (peer, bound name as the kernel holds it, listen backlog,
//! connections not yet accepted, shutdown state) comes from `sock_diag`
//! netlink (see sock_diag(7), `UNIX_DIAG_*`). The receive queue is read
//! without consuming it: `SO_PEEK_OFF` set to 0 and `MSG_PEEK` reads
//! walk the queue one message (datagram) or one run of bytes (stream) at a
//! time; descriptors in flight (`SCM_RIGHTS`) arrive as duplicates and are
//! handed to the caller, which makes them entries of the file table. The
//! target's own peek offset is put back afterwards.
//!
//! **Restore** is done by [`Restorer`] in criu itself, in two phases:
//! [`Restorer::open`] creates each socket (both ends of a pair with one
//! `socketpair(2)`, a connection with an accepted end through the restored
//! listener, `bind(2)` and `listen(2)` for named and listening ones);
//! [`Restorer::finish`], once every file of the table is open, refills each
//! receive queue by sending from the peer (or, for a named datagram socket,
//! from a temporary socket), with in-flight descriptors attached, then
//! connects datagram sockets, applies shutdown and socket options.
//!
//! Not restored: the sender's credentials of queued messages
//! (`SCM_CREDENTIALS` show criu's), the sender address of a datagram from
//! outside the tree, out-of-band data, data sent on a connection not
//! accepted yet (dump refuses it), where in a run of stream bytes the
//! write that carried descriptors began (they come with the run's last
//! byte), the name of a connected stream socket when no listener of that
//! name is restored (the pair is made with `socketpair(2)`).

use crate::error::{Error, Result};
use crate::sys;
use nix::sys::socket::{self as sk, sockopt, MsgFlags, SockFlag, UnixAddr};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// A reference to another entry of the file table (a descriptor in flight
/// in a queued message).
pub type FileRef = u32;

/// Socket type (see socket(2)).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnixType {
    /// `SOCK_STREAM`.
    Stream,
    /// `SOCK_DGRAM`.
    Dgram,
    /// `SOCK_SEQPACKET`.
    Seqpacket,
}

/// Connection state (sock_diag(7) `udiag_state`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnixState {
    /// Neither connected nor listening.
    Unconnected,
    /// Connected to a peer (see `peer`).
    Connected,
    /// `listen(2)` was called.
    Listening,
}

/// A socket address (see unix(7), "Address format").
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum UnixName {
    /// A pathname, as given to `bind(2)` (may be relative to the cwd the
    /// process had then).
    Path(Vec<u8>),
    /// An abstract name: the bytes after the leading NUL.
    Abstract(Vec<u8>),
}

impl UnixName {
    /// From the bytes of `sun_path` as sock_diag(7) `UNIX_DIAG_NAME` gives
    /// them (no trailing NUL); `None` for an unnamed socket.
    pub fn from_sun_path(raw: &[u8]) -> Option<Self> {
        match raw {
            [] => None,
            [0, rest @ ..] => Some(UnixName::Abstract(rest.to_vec())),
            p => {
                let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
                Some(UnixName::Path(p[..end].to_vec()))
            }
        }
    }

    fn from_addr(a: &UnixAddr) -> Option<Self> {
        use std::os::unix::ffi::OsStrExt;
        if let Some(p) = a.path() {
            return Some(UnixName::Path(p.as_os_str().as_bytes().to_vec()));
        }
        a.as_abstract().map(|b| UnixName::Abstract(b.to_vec()))
    }

    fn addr(&self) -> Result<UnixAddr> {
        use std::os::unix::ffi::OsStrExt;
        let r = match self {
            UnixName::Path(p) => UnixAddr::new(std::ffi::OsStr::from_bytes(p)),
            UnixName::Abstract(b) => UnixAddr::new_abstract(b),
        };
        r.map_err(|e| Error::Refused(format!("UNIX socket name {self}: {}", e.desc())))
    }
}

impl std::fmt::Display for UnixName {
    /// A path as is, an abstract name as `@name` (the convention of ss(8)),
    /// non-printable bytes escaped.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (at, b) = match self {
            UnixName::Path(p) => ("", p),
            UnixName::Abstract(a) => ("@", a),
        };
        write!(f, "{at}{}", b.escape_ascii())
    }
}

/// The socket file a pathname socket is bound to (sock_diag(7)
/// `UNIX_DIAG_VFS` and stat(2) of the path at dump time).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SockFile {
    /// Inode number of the socket file.
    pub ino: u64,
    /// Device of its filesystem, major and minor.
    pub dev: (u32, u32),
    /// Permission bits (`st_mode & 0o7777`), when the path still named it.
    pub mode: Option<u32>,
    /// Owner uid and gid, when the path still named it.
    pub owner: Option<(u32, u32)>,
}

/// One queued message: for a datagram or seqpacket socket one datagram,
/// for a stream socket a run of bytes (runs are cut where descriptors are
/// attached, so each descriptor stays with the bytes it came with).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UnixMessage {
    /// The bytes.
    pub data: Vec<u8>,
    /// Descriptors in flight with it (`SCM_RIGHTS`), as file table entries.
    pub fds: Vec<FileRef>,
    /// The sender's name (datagram sockets; informational, not restored).
    pub from: Option<UnixName>,
}

/// Socket options (see socket(7), unix(7)).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct UnixOptions {
    /// `SO_PASSCRED`.
    pub passcred: bool,
    /// `SO_SNDBUF` in bytes as getsockopt(2) reports it (twice what was set).
    pub sndbuf: u32,
    /// `SO_RCVBUF` in bytes, likewise.
    pub rcvbuf: u32,
    /// `SO_RCVTIMEO` in microseconds (0: none).
    pub rcvtimeo_us: u64,
    /// `SO_SNDTIMEO` in microseconds (0: none).
    pub sndtimeo_us: u64,
    /// `SO_PEEK_OFF` in bytes, -1 when disabled (the default).
    pub peek_off: i32,
}

/// `SHUTDOWN` bits of sock_diag(7) `UNIX_DIAG_SHUTDOWN`: no more receives.
pub const RCV_SHUTDOWN: u8 = 1;
/// No more sends.
pub const SEND_SHUTDOWN: u8 = 2;

/// A UNIX socket open file description.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UnixEntry {
    /// Inode number of the socket (`socket:[INO]`).
    pub ino: u64,
    /// Socket type.
    pub ty: UnixType,
    /// Connection state.
    pub state: UnixState,
    /// Bound name; for an accepted connection, its listener's name.
    pub name: Option<UnixName>,
    /// The socket file of a pathname name.
    pub file: Option<SockFile>,
    /// When `name` or `peer_name` is a relative pathname: the holder's
    /// working directory at dump, taken as the directory it is relative to.
    pub bind_dir: Option<Vec<u8>>,
    /// Inode of the peer socket, 0 if none (or the peer was closed).
    pub peer: u64,
    /// The peer's name, so a peer outside the tree can be reconnected.
    pub peer_name: Option<UnixName>,
    /// The peer is outside the dumped tree and the user allowed it
    /// (`--ext-unix-sk`): restore connects to `peer_name` again.
    pub external: bool,
    /// A listener: the inodes of the sockets that connected to it and are
    /// not accepted yet, oldest first (sock_diag(7) `UNIX_DIAG_ICONS`).
    pub pending: Vec<u64>,
    /// A socket that connected to a listener of the tree that has not
    /// accepted it yet: that listener's inode (0: none). Its `peer` is 0
    /// (the connection's other end has no inode before accept(2)).
    pub pending_on: u64,
    /// `listen(2)` backlog of a listening socket.
    pub backlog: u32,
    /// [`RCV_SHUTDOWN`] | [`SEND_SHUTDOWN`].
    pub shutdown: u8,
    /// Socket options.
    pub opts: UnixOptions,
    /// `O_NONBLOCK` of the open file description.
    pub nonblock: bool,
    /// The receive queue, oldest first.
    pub queue: Vec<UnixMessage>,
}

impl UnixEntry {
    /// One line for `criu show`: type, inode, state, name, peer, shutdown,
    /// options and queue, e.g. `stream socket:[123] connected peer
    /// socket:[124] queue 2 messages 10 bytes 1 fds`.
    pub fn describe(&self) -> String {
        let mut s = format!("{:?} socket:[{}] {:?}", self.ty, self.ino, self.state).to_lowercase();
        if let Some(n) = &self.name {
            s += &format!(" name {n}");
        }
        if self.state == UnixState::Listening {
            s += &format!(" backlog {}", self.backlog);
        }
        if self.peer != 0 {
            s += &format!(" peer socket:[{}]", self.peer);
            if let Some(n) = &self.peer_name {
                s += &format!(" ({n})");
            }
            if self.external {
                s += " external";
            }
        }
        if self.shutdown != 0 {
            s += &format!(" shutdown {}", self.shutdown);
        }
        if self.opts.passcred {
            s += " passcred";
        }
        let bytes: usize = self.queue.iter().map(|m| m.data.len()).sum();
        let fds: usize = self.queue.iter().map(|m| m.fds.len()).sum();
        if !self.queue.is_empty() {
            s += &format!(
                " queue {} messages {bytes} bytes {fds} fds",
                self.queue.len()
            );
        }
        s
    }

    fn who(&self) -> String {
        match &self.name {
            Some(n) => format!("UNIX socket socket:[{}] ({n})", self.ino),
            None => format!("UNIX socket socket:[{}]", self.ino),
        }
    }
}

// ---------------------------------------------------------------- sock_diag

/// `SOCK_DIAG_BY_FAMILY` netlink message type (see sock_diag(7)).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
/// `TCP_ESTABLISHED` and `TCP_LISTEN`, the states UNIX sockets report.
const ST_ESTABLISHED: u8 = 1;
const ST_LISTEN: u8 = 10;

/// What sock_diag(7) reports about one UNIX socket.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DiagInfo {
    /// `udiag_state` (`TCP_ESTABLISHED` 1, `TCP_CLOSE` 7, `TCP_LISTEN` 10).
    pub state: u8,
    /// `UNIX_DIAG_NAME`: the raw `sun_path` bytes.
    pub name: Vec<u8>,
    /// `UNIX_DIAG_VFS`: inode and device (kernel encoding) of the file.
    pub vfs: Option<(u32, u32)>,
    /// `UNIX_DIAG_PEER`: peer inode, 0 if none.
    pub peer: u32,
    /// `UNIX_DIAG_ICONS`: inodes of connections a listener has not accepted.
    pub icons: Vec<u32>,
    /// `UNIX_DIAG_RQLEN`: for a listener pending connections and backlog;
    /// otherwise bytes queued to read and to be read by the peer.
    pub rqlen: (u32, u32),
    /// `UNIX_DIAG_SHUTDOWN`.
    pub shutdown: u8,
}

/// A `NETLINK_SOCK_DIAG` socket for exact per-inode queries.
pub struct Diag {
    sock: OwnedFd,
    seq: u32,
}

impl Diag {
    /// Open the netlink socket.
    ///
    /// Errors: socket(2) failed.
    pub fn open() -> Result<Self> {
        let sock = sk::socket(
            sk::AddressFamily::Netlink,
            sk::SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            sk::SockProtocol::NetlinkSockDiag,
        )
        .map_err(|e| Error::Unsupported(format!("sock_diag netlink socket: {}", e.desc())))?;
        Ok(Diag { sock, seq: 0 })
    }

    /// Ask about socket inode `ino` (sock_diag(7), `udiag_ino`).
    ///
    /// Errors: the kernel's errno (ENOENT: no such UNIX socket in this
    /// network namespace), or a reply we cannot parse.
    pub fn query(&mut self, ino: u64) -> std::io::Result<DiagInfo> {
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let ino32 = u32::try_from(ino).map_err(|_| bad("inode beyond 32 bits"))?;
        self.seq = self.seq.wrapping_add(1);
        let mut req = Vec::with_capacity(40);
        req.extend_from_slice(&40u32.to_ne_bytes());
        req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        // struct unix_diag_req
        req.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
        req.extend_from_slice(&u32::MAX.to_ne_bytes()); // udiag_states
        req.extend_from_slice(&ino32.to_ne_bytes());
        let show = UDIAG_SHOW_NAME
            | UDIAG_SHOW_VFS
            | UDIAG_SHOW_PEER
            | UDIAG_SHOW_ICONS
            | UDIAG_SHOW_RQLEN;
        req.extend_from_slice(&show.to_ne_bytes());
        req.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
        req.extend_from_slice(&u32::MAX.to_ne_bytes());
        let to = sk::NetlinkAddr::new(0, 0);
        sk::sendto(self.sock.as_raw_fd(), &req, &to, MsgFlags::empty())?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = sk::recv(self.sock.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let reply = &buf[..n];
            if reply.len() < 16 {
                return Err(bad("short netlink reply"));
            }
            let len = u32_at(reply, 0) as usize;
            let ty = u16::from_ne_bytes([reply[4], reply[5]]);
            let seq = u32_at(reply, 8);
            if len < 16 || len > reply.len() {
                return Err(bad("netlink length out of range"));
            }
            if seq != self.seq {
                continue; // a stale reply to an earlier query
            }
            let body = &reply[16..len];
            if ty == NLMSG_ERROR {
                let e = body
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return Err(std::io::Error::from_raw_os_error(-e.unwrap_or(-libc::EIO)));
            }
            if ty != SOCK_DIAG_BY_FAMILY {
                return Err(bad("unexpected netlink message type"));
            }
            return parse_diag(body, ino32).ok_or_else(|| bad("malformed unix_diag_msg"));
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parse `struct unix_diag_msg` and its attributes (see sock_diag(7)).
fn parse_diag(body: &[u8], ino: u32) -> Option<DiagInfo> {
    if body.len() < 16 || body[0] != libc::AF_UNIX as u8 || u32_at(body, 4) != ino {
        return None;
    }
    let mut d = DiagInfo {
        state: body[2],
        ..Default::default()
    };
    let mut at = 16;
    while at + 4 <= body.len() {
        let alen = u16::from_ne_bytes([body[at], body[at + 1]]) as usize;
        let aty = u16::from_ne_bytes([body[at + 2], body[at + 3]]);
        if alen < 4 || at + alen > body.len() {
            return None;
        }
        let p = &body[at + 4..at + alen];
        match aty {
            UNIX_DIAG_NAME => d.name = p.to_vec(),
            UNIX_DIAG_VFS if p.len() >= 8 => d.vfs = Some((u32_at(p, 0), u32_at(p, 4))),
            UNIX_DIAG_PEER if p.len() >= 4 => d.peer = u32_at(p, 0),
            UNIX_DIAG_ICONS => d.icons = p.chunks_exact(4).map(|c| u32_at(c, 0)).collect(),
            UNIX_DIAG_RQLEN if p.len() >= 8 => d.rqlen = (u32_at(p, 0), u32_at(p, 4)),
            UNIX_DIAG_SHUTDOWN if !p.is_empty() => d.shutdown = p[0],
            _ => {}
        }
        at += (alen + 3) & !3;
    }
    Some(d)
}

// --------------------------------------------------------------------- dump

/// Dumps UNIX sockets: one sock_diag socket and one read buffer for a
/// whole dump.
pub struct Dumper {
    diag: Diag,
    buf: Vec<u8>,
}

/// Largest datagram read from a queue (bytes); a larger one makes dump
/// fail rather than be cut.
const MAX_DGRAM: usize = 4 << 20;

/// Puts the target's `SO_PEEK_OFF` back when the queue has been read.
struct PeekOff<'a> {
    fd: BorrowedFd<'a>,
    old: i32,
}

impl Drop for PeekOff<'_> {
    fn drop(&mut self) {
        if let Err(e) = sys::setsockopt_int(self.fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, self.old)
        {
            crate::warn!("could not put SO_PEEK_OFF back to {}: {e}", self.old);
        }
    }
}

impl Dumper {
    /// Open the sock_diag socket.
    ///
    /// Errors: see [`Diag::open`].
    pub fn new() -> Result<Self> {
        Ok(Dumper {
            diag: Diag::open()?,
            buf: Vec::new(),
        })
    }

    /// Describe the socket `sock` (criu's duplicate of a descriptor `who`
    /// names, e.g. "pid 12 fd 4"), with its receive queue; each descriptor
    /// in flight in the queue is given to `inflight`, which returns its
    /// table entry. `nonblock` is the description's `O_NONBLOCK`.
    ///
    /// Errors: [`Error::Unsupported`] naming `who` for a listener with
    /// connections not yet accepted, a datagram over 4 MiB, or a socket
    /// sock_diag does not know; system call failures.
    pub fn dump(
        &mut self,
        who: &str,
        sock: BorrowedFd<'_>,
        nonblock: bool,
        cwd: &std::path::Path,
        inflight: &mut dyn FnMut(OwnedFd) -> Result<FileRef>,
    ) -> Result<UnixEntry> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::Unsupported(format!("{who}: UNIX socket: {what}: {e}"))
        };
        let st = nix::sys::stat::fstat(sock.as_raw_fd()).map_err(|e| fail("fstat", &e))?;
        let ino = st.st_ino;
        let d = self
            .diag
            .query(ino)
            .map_err(|e| fail(&format!("sock_diag of socket:[{ino}]"), &e))?;
        let ty = match sk::getsockopt(&sock, sockopt::SockType).map_err(|e| fail("SO_TYPE", &e))? {
            sk::SockType::Stream => UnixType::Stream,
            sk::SockType::Datagram => UnixType::Dgram,
            sk::SockType::SeqPacket => UnixType::Seqpacket,
            t => return Err(fail("type", &format!("{t:?} is not supported"))),
        };
        let name = UnixName::from_sun_path(&d.name);
        // A datagram socket that another one connected to reports
        // TCP_ESTABLISHED too; it is connected only if it has a peer.
        let state = match d.state {
            ST_LISTEN => UnixState::Listening,
            ST_ESTABLISHED if ty != UnixType::Dgram || d.peer != 0 => UnixState::Connected,
            _ => UnixState::Unconnected,
        };
        // A stream socket whose connection is not accepted yet: its peer
        // has no inode yet (sock_diag says 0) and, unlike a socket whose
        // peer was closed, it is not shut down. What it sent waits in that
        // peer's queue, which nothing can read without accepting it.
        let unaccepted = ty != UnixType::Dgram
            && state == UnixState::Connected
            && d.peer == 0
            && d.shutdown == 0;
        if unaccepted && d.rqlen.1 != 0 {
            return Err(Error::Unsupported(format!(
                "{who}: UNIX socket socket:[{ino}] has sent data on a connection its listener has not accepted yet; dump again once it is accepted"
            )));
        }
        let peer = d.peer as u64;
        let peer_name = if unaccepted {
            sk::getpeername::<UnixAddr>(sock.as_raw_fd())
                .ok()
                .as_ref()
                .and_then(UnixName::from_addr)
        } else if peer != 0 {
            match self.diag.query(peer) {
                Ok(pd) => UnixName::from_sun_path(&pd.name),
                Err(e) => {
                    crate::debug!("{who}: sock_diag of peer socket:[{peer}]: {e}");
                    None
                }
            }
        } else {
            None
        };
        let bind_dir = if relative(&name) || relative(&peer_name) {
            use std::os::unix::ffi::OsStrExt;
            Some(cwd.as_os_str().as_bytes().to_vec())
        } else {
            None
        };
        let file = match (&name, d.vfs) {
            (Some(UnixName::Path(p)), Some((vino, vdev))) => {
                Some(sock_file(&fs_path(p, bind_dir.as_deref()), vino, vdev))
            }
            _ => None,
        };
        let tv_us =
            |t: nix::sys::time::TimeVal| (t.tv_sec() as u64) * 1_000_000 + t.tv_usec() as u64;
        let opts = UnixOptions {
            passcred: sk::getsockopt(&sock, sockopt::PassCred)
                .map_err(|e| fail("SO_PASSCRED", &e))?,
            sndbuf: sk::getsockopt(&sock, sockopt::SndBuf).map_err(|e| fail("SO_SNDBUF", &e))?
                as u32,
            rcvbuf: sk::getsockopt(&sock, sockopt::RcvBuf).map_err(|e| fail("SO_RCVBUF", &e))?
                as u32,
            rcvtimeo_us: tv_us(
                sk::getsockopt(&sock, sockopt::ReceiveTimeout)
                    .map_err(|e| fail("SO_RCVTIMEO", &e))?,
            ),
            sndtimeo_us: tv_us(
                sk::getsockopt(&sock, sockopt::SendTimeout).map_err(|e| fail("SO_SNDTIMEO", &e))?,
            ),
            peek_off: sys::getsockopt_int(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF)
                .map_err(|e| fail("SO_PEEK_OFF", &e))?,
        };
        // A stream or seqpacket socket that is not connected has no queue
        // (and MSG_PEEK on it fails with EINVAL).
        let queue = if state == UnixState::Listening
            || (state == UnixState::Unconnected && ty != UnixType::Dgram)
        {
            Vec::new()
        } else {
            self.read_queue(who, sock, ty, opts.peek_off, inflight)?
        };
        if ty != UnixType::Dgram && state == UnixState::Connected {
            let bytes: usize = queue.iter().map(|m| m.data.len()).sum();
            if bytes != d.rqlen.0 as usize {
                return Err(Error::Unsupported(format!(
                    "{who}: UNIX socket socket:[{ino}]: read {bytes} queued bytes but the kernel counts {}; out-of-band data is not supported",
                    d.rqlen.0
                )));
            }
        }
        Ok(UnixEntry {
            ino,
            ty,
            state,
            name,
            file,
            bind_dir,
            peer,
            peer_name,
            external: false,
            pending: d.icons.iter().map(|&i| i as u64).collect(),
            pending_on: 0,
            backlog: if state == UnixState::Listening {
                d.rqlen.1
            } else {
                0
            },
            shutdown: d.shutdown,
            opts,
            nonblock,
            queue,
        })
    }

    /// Read the receive queue with `MSG_PEEK` from offset 0 (see socket(7),
    /// `SO_PEEK_OFF`), then put the target's peek offset `old` back.
    fn read_queue(
        &mut self,
        who: &str,
        sock: BorrowedFd<'_>,
        ty: UnixType,
        old: i32,
        inflight: &mut dyn FnMut(OwnedFd) -> Result<FileRef>,
    ) -> Result<Vec<UnixMessage>> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::Unsupported(format!("{who}: UNIX socket: {what}: {e}"))
        };
        sys::setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)
            .map_err(|e| fail("SO_PEEK_OFF", &e))?;
        let _restore = PeekOff { fd: sock, old };
        if self.buf.len() < MAX_DGRAM {
            self.buf.resize(MAX_DGRAM, 0);
        }
        let mut out = Vec::new();
        loop {
            let r = match sys::recvmsg_fds(
                sock,
                &mut self.buf,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(r) => r,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break,
                Err(e) => return Err(fail("reading the queue (MSG_PEEK)", &e)),
            };
            if r.truncated {
                return Err(fail(
                    "reading the queue",
                    &format!("a message is larger than {MAX_DGRAM} bytes or carries more than 253 descriptors"),
                ));
            }
            if r.len == 0 && r.fds.is_empty() && ty == UnixType::Stream {
                break; // end of stream: the peer shut down
            }
            // A stream read runs on over the writes of one sender and stops
            // after the first write that carries descriptors; where that
            // write starts cannot be seen (a peek at any offset of the run
            // walks on to the descriptors). Sent again as one write, the
            // descriptors would come with the run's first byte, and a
            // reader taking the earlier bytes with a plain read(2) would
            // lose them; so they go with the run's last byte instead: late
            // rather than early, they reach any reader that reads the
            // write that carried them to its end.
            let split = if ty == UnixType::Stream && !r.fds.is_empty() && r.len > 1 {
                r.len - 1
            } else {
                0
            };
            if split > 0 {
                out.push(UnixMessage {
                    data: self.buf[..split].to_vec(),
                    fds: Vec::new(),
                    from: None,
                });
            }
            let mut fds = Vec::with_capacity(r.fds.len());
            for f in r.fds {
                fds.push(inflight(f)?);
            }
            out.push(UnixMessage {
                data: self.buf[split..r.len].to_vec(),
                fds,
                from: r.from.as_ref().and_then(UnixName::from_addr),
            });
        }
        Ok(out)
    }
}

/// The socket file of a pathname socket: sock_diag gives its inode and
/// device (kernel `dev_t` encoding: major << 20 | minor); mode and owner
/// come from the path if it still names that file.
fn sock_file(path: &std::path::Path, vino: u32, vdev: u32) -> SockFile {
    use std::os::unix::fs::MetadataExt;
    let dev = (vdev >> 20, vdev & 0xf_ffff);
    let mut f = SockFile {
        ino: vino as u64,
        dev,
        mode: None,
        owner: None,
    };
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if same_file(&md, &f) {
            f.mode = Some(md.mode() & 0o7777);
            f.owner = Some((md.uid(), md.gid()));
        }
    }
    f
}

fn relative(n: &Option<UnixName>) -> bool {
    matches!(n, Some(UnixName::Path(p)) if p.first() != Some(&b'/'))
}

/// The address that reaches `n` from criu: a relative pathname joined to
/// `dir` (the directory it was relative to).
fn abs_addr(n: &UnixName, dir: Option<&[u8]>) -> Result<UnixAddr> {
    match n {
        UnixName::Path(p) if dir.is_some() && p.first() != Some(&b'/') => {
            use std::os::unix::ffi::OsStrExt;
            let full = fs_path(p, dir);
            UnixName::Path(full.as_os_str().as_bytes().to_vec()).addr()
        }
        _ => n.addr(),
    }
}

/// Where pathname `name` is in criu's view: joined to `dir` if relative.
fn fs_path(name: &[u8], dir: Option<&[u8]>) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let n = std::path::Path::new(std::ffi::OsStr::from_bytes(name));
    match dir {
        Some(d) => std::path::Path::new(std::ffi::OsStr::from_bytes(d)).join(n),
        None => n.to_path_buf(),
    }
}

fn same_file(md: &std::fs::Metadata, f: &SockFile) -> bool {
    use std::os::unix::fs::MetadataExt;
    md.ino() == f.ino && (libc::major(md.dev()), libc::minor(md.dev())) == f.dev
}

/// Which sockets may have a peer outside the dumped tree (`--ext-unix-sk`,
/// `--external unix[INO]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtUnix {
    /// `--ext-unix-sk`: any.
    pub all: bool,
    /// `--external unix[INO]`: the socket or its peer has this inode.
    pub inos: Vec<u64>,
}

impl ExtUnix {
    fn allows(&self, e: &UnixEntry) -> bool {
        self.all || self.inos.contains(&e.ino) || self.inos.contains(&e.peer)
    }
}

/// Check the UNIX sockets of the whole dumped tree: every peer must be one
/// of them, unless `ext` allows it (then the entry is marked `external`
/// and restore connects to the peer's name again). `who` names the first
/// holder of a socket inode ("pid 12 fd 4").
///
/// Errors: [`Error::Refused`] naming the holder, the socket and its peer.
pub fn check_peers(
    socks: &mut [&mut UnixEntry],
    who: &dyn Fn(u64) -> String,
    ext: &ExtUnix,
) -> Result<()> {
    let inos: HashSet<u64> = socks.iter().map(|e| e.ino).collect();
    // Connections not accepted yet: each client must be in the tree.
    let mut pending_on: HashMap<u64, u64> = HashMap::new();
    for l in socks.iter() {
        for &c in &l.pending {
            if c == 0 || !inos.contains(&c) {
                return Err(Error::Refused(format!(
                    "{}: {} has a connection not accepted yet from socket:[{c}], which is outside the dumped tree; dump again once the process has accepted it",
                    who(l.ino),
                    l.who()
                )));
            }
            pending_on.insert(c, l.ino);
        }
    }
    for e in socks.iter_mut() {
        if let Some(&l) = pending_on.get(&e.ino) {
            e.pending_on = l;
            continue;
        }
        let unaccepted = e.ty != UnixType::Dgram
            && e.state == UnixState::Connected
            && e.peer == 0
            && e.shutdown == 0;
        if !unaccepted && (e.peer == 0 || inos.contains(&e.peer)) {
            continue;
        }
        let peer = match (&e.peer_name, unaccepted) {
            (Some(n), true) => format!("a listener ({n}) that has not accepted it yet"),
            (None, true) => "a listener that has not accepted it yet".to_string(),
            (Some(n), false) => format!("socket:[{}] ({n})", e.peer),
            (None, false) => format!("socket:[{}]", e.peer),
        };
        if !ext.allows(e) {
            return Err(Error::Refused(format!(
                "{}: {} is connected to {peer}, which is outside the dumped tree; dump the process holding it too, or allow it with --ext-unix-sk (or --external unix[{}]) to reconnect by name at restore",
                who(e.ino),
                e.who(),
                if e.peer != 0 { e.peer } else { e.ino }
            )));
        }
        if e.peer_name.is_none() {
            return Err(Error::Refused(format!(
                "{}: {} is connected to {peer} outside the dumped tree, which has no name to reconnect to at restore; --ext-unix-sk cannot restore it",
                who(e.ino),
                e.who()
            )));
        }
        if e.ty != UnixType::Dgram && !e.queue.is_empty() {
            return Err(Error::Refused(format!(
                "{}: {} has data queued from the external peer {peer}, which cannot be sent again at restore; dump again once the process has read it",
                who(e.ino),
                e.who()
            )));
        }
        e.external = true;
    }
    Ok(())
}

// ------------------------------------------------------------------ restore

fn sock_type(t: UnixType) -> sk::SockType {
    match t {
        UnixType::Stream => sk::SockType::Stream,
        UnixType::Dgram => sk::SockType::Datagram,
        UnixType::Seqpacket => sk::SockType::SeqPacket,
    }
}

/// Creates UNIX sockets in criu for restore; see the module documentation
/// for the two phases.
pub struct Restorer {
    entries: HashMap<u64, UnixEntry>,
    /// Created and not yet returned by [`Restorer::open`].
    made: HashMap<u64, OwnedFd>,
    /// A duplicate of every created socket, for [`Restorer::finish`].
    keep: HashMap<u64, OwnedFd>,
    /// The other end of a socket whose peer had been closed.
    orphans: HashMap<u64, OwnedFd>,
    /// Sockets made as one end of a `socketpair(2)` or connect/accept.
    paired: HashSet<u64>,
    returned: HashSet<u64>,
}

impl Restorer {
    /// A restorer for the UNIX sockets of a whole image set.
    pub fn new<'a>(entries: impl IntoIterator<Item = &'a UnixEntry>) -> Self {
        Restorer {
            entries: entries.into_iter().map(|e| (e.ino, e.clone())).collect(),
            made: HashMap::new(),
            keep: HashMap::new(),
            orphans: HashMap::new(),
            paired: HashSet::new(),
            returned: HashSet::new(),
        }
    }

    /// Phase 1: the socket of entry `e` (which must have been given to
    /// [`Restorer::new`]), created, named and, for pairs, connected; queues
    /// are filled by [`Restorer::finish`].
    ///
    /// Errors: [`Error::Refused`] when a name is taken by another file or
    /// the image is inconsistent; system call failures naming the socket.
    pub fn open(&mut self, e: &UnixEntry) -> Result<OwnedFd> {
        if !self.entries.contains_key(&e.ino) {
            return Err(Error::Refused(format!(
                "{}: not among the UNIX sockets of the images",
                e.who()
            )));
        }
        if !self.returned.insert(e.ino) {
            return Err(Error::Refused(format!("{}: opened twice", e.who())));
        }
        if !self.keep.contains_key(&e.ino) {
            self.create(e.ino)?;
        }
        let fd = self
            .made
            .remove(&e.ino)
            .ok_or_else(|| Error::Refused(format!("{}: created but lost", e.who())))?;
        if e.nonblock {
            set_nonblock(fd.as_fd()).map_err(|er| sys_err(e, "fcntl(O_NONBLOCK)", er))?;
        }
        Ok(fd)
    }

    /// Whether the socket `ino` is one of the images' and
    /// [`Restorer::open`] has not yet returned it (e.g. a socket that was
    /// only in flight in a queue).
    pub fn needs_open(&self, ino: u64) -> bool {
        self.entries.contains_key(&ino) && !self.returned.contains(&ino)
    }

    fn store(&mut self, ino: u64, fd: OwnedFd) -> Result<()> {
        let dup = fd
            .try_clone()
            .map_err(|er| Error::Refused(format!("socket:[{ino}]: dup: {er}")))?;
        self.keep.insert(ino, dup);
        self.made.insert(ino, fd);
        Ok(())
    }

    /// The listener restored with `name`, created now if needed.
    fn listener(&mut self, name: &UnixName) -> Result<Option<u64>> {
        let l = self
            .entries
            .values()
            .find(|l| l.state == UnixState::Listening && l.name.as_ref() == Some(name))
            .map(|l| l.ino);
        if let Some(l) = l {
            if !self.keep.contains_key(&l) {
                self.create(l)?;
            }
        }
        Ok(l)
    }

    fn create(&mut self, ino: u64) -> Result<()> {
        let e = self.entries[&ino].clone();
        let new = |e: &UnixEntry| {
            sk::socket(
                sk::AddressFamily::Unix,
                sock_type(e.ty),
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|er| sys_err(e, "socket", er))
        };
        let internal_peer = self.entries.get(&e.peer).cloned();
        match e.state {
            UnixState::Listening => {
                let s = new(&e)?;
                if let Some(n) = &e.name {
                    bind_name(&e, s.as_fd(), n)?;
                }
                sk::listen(
                    &s,
                    sk::Backlog::new(e.backlog as i32).unwrap_or(sk::Backlog::MAXCONN),
                )
                .map_err(|er| sys_err(&e, "listen", er))?;
                self.store(ino, s)?;
                // Its connections not accepted yet, in their order.
                for c in &e.pending {
                    let Some(ce) = self.entries.get(c).cloned() else {
                        continue;
                    };
                    if self.keep.contains_key(c) {
                        continue;
                    }
                    let n = e.name.as_ref().ok_or_else(|| {
                        Error::Refused(format!(
                            "{}: a listener with no name has connections",
                            e.who()
                        ))
                    })?;
                    let cs = new(&ce)?;
                    if let Some(cn) = &ce.name {
                        if cn != n {
                            bind_name(&ce, cs.as_fd(), cn)?;
                        }
                    }
                    sk::connect(cs.as_raw_fd(), &abs_addr(n, e.bind_dir.as_deref())?)
                        .map_err(|er| sys_err(&ce, "connect", er))?;
                    self.store(*c, cs)?;
                }
                Ok(())
            }
            UnixState::Connected if e.pending_on != 0 => {
                if !self.entries.contains_key(&e.pending_on) {
                    return Err(Error::Refused(format!(
                        "{}: its listener socket:[{}] is not in the images",
                        e.who(),
                        e.pending_on
                    )));
                }
                if !self.keep.contains_key(&e.pending_on) {
                    self.create(e.pending_on)?;
                }
                if self.keep.contains_key(&ino) {
                    Ok(())
                } else {
                    Err(Error::Refused(format!(
                        "{}: not among the connections of its listener socket:[{}] (image inconsistent)",
                        e.who(),
                        e.pending_on
                    )))
                }
            }
            UnixState::Connected if e.ty != UnixType::Dgram => {
                if let Some(p) = internal_peer {
                    if p.peer != e.ino {
                        return Err(Error::Refused(format!(
                            "{}: its peer socket:[{}] is connected elsewhere (image inconsistent)",
                            e.who(),
                            p.ino
                        )));
                    }
                    // An accepted connection carries its listener's name:
                    // connect through the restored listener so both ends
                    // have their names again.
                    for (acc, cli) in [(&e, &p), (&p, &e)] {
                        let Some(n) = &acc.name else { continue };
                        let Some(l) = self.listener(n)? else { continue };
                        let c = new(cli)?;
                        if let Some(cn) = &cli.name {
                            if cn != n {
                                bind_name(cli, c.as_fd(), cn)?;
                            }
                        }
                        sk::connect(c.as_raw_fd(), &abs_addr(n, acc.bind_dir.as_deref())?)
                            .map_err(|er| sys_err(cli, "connect", er))?;
                        let a = sys::accept_cloexec(self.keep[&l].as_fd())
                            .map_err(|er| sys_err(acc, "accept", er))?;
                        self.paired.insert(acc.ino);
                        self.paired.insert(cli.ino);
                        self.store(acc.ino, a)?;
                        return self.store(cli.ino, c);
                    }
                    let (a, b) = pair(&e)?;
                    self.paired.insert(e.ino);
                    self.paired.insert(p.ino);
                    self.store(p.ino, b)?;
                    self.store(e.ino, a)
                } else if e.external {
                    let s = new(&e)?;
                    let n = e.peer_name.clone().ok_or_else(|| {
                        Error::Refused(format!("{}: external peer without a name", e.who()))
                    })?;
                    sk::connect(s.as_raw_fd(), &abs_addr(&n, e.bind_dir.as_deref())?).map_err(
                        |er| {
                            Error::Refused(format!(
                                "{}: reconnecting to the external peer {n}: {}",
                                e.who(),
                                er.desc()
                            ))
                        },
                    )?;
                    self.store(ino, s)
                } else if e.peer == 0 {
                    // The peer had been closed: a pair whose other end
                    // sends the queued data, then is closed.
                    let (a, b) = pair(&e)?;
                    self.orphans.insert(ino, b);
                    self.paired.insert(ino);
                    self.store(ino, a)
                } else {
                    Err(Error::Refused(format!(
                        "{}: its peer socket:[{}] is not in the images",
                        e.who(),
                        e.peer
                    )))
                }
            }
            _ => {
                // Datagram sockets (connected in phase 2) and unconnected
                // stream and seqpacket sockets.
                if let Some(p) = internal_peer.filter(|p| {
                    e.state == UnixState::Connected
                        && p.peer == e.ino
                        && p.name.is_none()
                        && e.name.is_none()
                }) {
                    let (a, b) = pair(&e)?;
                    self.paired.insert(e.ino);
                    self.paired.insert(p.ino);
                    self.store(p.ino, b)?;
                    return self.store(e.ino, a);
                }
                let s = new(&e)?;
                if let Some(n) = &e.name {
                    bind_name(&e, s.as_fd(), n)?;
                }
                self.store(ino, s)
            }
        }
    }

    /// Phase 2, once every entry of the table is open: refill the receive
    /// queues (`resolve` gives a descriptor of a table entry in flight),
    /// connect datagram sockets, shut down, set options.
    ///
    /// Errors: a queue that cannot be sent again (naming the socket),
    /// system call failures.
    pub fn finish(mut self, resolve: &mut dyn FnMut(FileRef) -> Result<OwnedFd>) -> Result<()> {
        let mut inos: Vec<u64> = self.keep.keys().copied().collect();
        inos.sort_unstable();
        for &ino in &inos {
            let e = self.entries[&ino].clone();
            if !e.queue.is_empty() {
                self.refill(&e, resolve)?;
            }
        }
        self.orphans.clear();
        for &ino in &inos {
            let e = &self.entries[&ino];
            let s = self.keep[&ino].as_fd();
            if e.ty == UnixType::Dgram
                && e.state == UnixState::Connected
                && e.peer != 0
                && !self.paired.contains(&ino)
            {
                let n = e.peer_name.as_ref().ok_or_else(|| {
                    Error::Refused(format!(
                        "{}: connected to socket:[{}], which has no name",
                        e.who(),
                        e.peer
                    ))
                })?;
                let dir = self
                    .entries
                    .get(&e.peer)
                    .and_then(|p| p.bind_dir.as_deref())
                    .or(e.bind_dir.as_deref());
                sk::connect(s.as_raw_fd(), &abs_addr(n, dir)?).map_err(|er| {
                    Error::Refused(format!("{}: connect to {n}: {}", e.who(), er.desc()))
                })?;
            }
            if e.shutdown & RCV_SHUTDOWN != 0 {
                shutdown(s, sk::Shutdown::Read).map_err(|er| sys_err(e, "shutdown", er))?;
            }
            if e.shutdown & SEND_SHUTDOWN != 0 {
                shutdown(s, sk::Shutdown::Write).map_err(|er| sys_err(e, "shutdown", er))?;
            }
            set_options(e, s)?;
        }
        Ok(())
    }

    /// The datagram socket of the images bound to `n`, if criu made it.
    fn dgram_named(&self, n: &UnixName) -> Option<u64> {
        self.entries
            .values()
            .find(|x| x.ty == UnixType::Dgram && x.name.as_ref() == Some(n))
            .map(|x| x.ino)
            .filter(|ino| self.keep.contains_key(ino))
    }

    fn refill(
        &mut self,
        e: &UnixEntry,
        resolve: &mut dyn FnMut(FileRef) -> Result<OwnedFd>,
    ) -> Result<()> {
        let temp;
        let (sender, to): (BorrowedFd<'_>, Option<UnixAddr>) =
            if let Some(o) = self.orphans.get(&e.ino) {
                (o.as_fd(), None)
            } else if self.paired.contains(&e.ino) {
                let p = self.keep.get(&e.peer).ok_or_else(|| {
                    Error::Refused(format!("{}: its peer was not restored", e.who()))
                })?;
                (p.as_fd(), None)
            } else if let (UnixType::Dgram, Some(n)) = (e.ty, &e.name) {
                temp = sk::socket(
                    sk::AddressFamily::Unix,
                    sk::SockType::Datagram,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .map_err(|er| sys_err(e, "socket", er))?;
                (temp.as_fd(), Some(abs_addr(n, e.bind_dir.as_deref())?))
            } else {
                return Err(Error::Refused(format!(
                    "{}: {} queued messages but no socket can send them again",
                    e.who(),
                    e.queue.len()
                )));
            };
        let total: usize = e.queue.iter().map(|m| m.data.len()).sum();
        // Room for the data and the kernel's per-message overhead
        // (`truesize`), whatever the sender's own limit was.
        let want = (total * 2 + e.queue.len() * 4096 + (1 << 16)).min(i32::MAX as usize / 2);
        let room = |s: BorrowedFd<'_>| {
            if sk::setsockopt(&s, sockopt::SndBufForce, &want).is_err() {
                let _ = sk::setsockopt(&s, sockopt::SndBuf, &want);
            }
        };
        room(sender);
        let mut roomy: HashSet<u64> = HashSet::new();
        for (i, m) in e.queue.iter().enumerate() {
            // A datagram from a named socket of the tree is sent from that
            // socket again, so the receiver sees the same sender address
            // (recvfrom(2)); others come from the temporary socket.
            let sender = match (&to, m.from.as_ref().and_then(|n| self.dgram_named(n))) {
                (Some(_), Some(ino)) => {
                    let s = self.keep[&ino].as_fd();
                    if roomy.insert(ino) {
                        room(s);
                    }
                    s
                }
                _ => sender,
            };
            let mut held = Vec::with_capacity(m.fds.len());
            for &r in &m.fds {
                held.push(resolve(r)?);
            }
            let raw: Vec<RawFd> = held.iter().map(|f| f.as_raw_fd()).collect();
            let cmsgs = [sk::ControlMessage::ScmRights(&raw)];
            let cm: &[sk::ControlMessage] = if raw.is_empty() { &[] } else { &cmsgs };
            let iov = [std::io::IoSlice::new(&m.data)];
            let n = sk::sendmsg(
                sender.as_raw_fd(),
                &iov,
                cm,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                to.as_ref(),
            )
            .map_err(|er| {
                Error::Refused(format!(
                    "{}: sending queued message {} of {} ({} bytes) again: {}",
                    e.who(),
                    i + 1,
                    e.queue.len(),
                    m.data.len(),
                    er.desc()
                ))
            })?;
            if n != m.data.len() {
                return Err(Error::Refused(format!(
                    "{}: queued message {} sent only in part ({n} of {} bytes)",
                    e.who(),
                    i + 1,
                    m.data.len()
                )));
            }
        }
        Ok(())
    }
}

fn sys_err(e: &UnixEntry, call: &str, er: impl std::fmt::Display) -> Error {
    Error::Refused(format!("{}: {call}: {er}", e.who()))
}

fn pair(e: &UnixEntry) -> Result<(OwnedFd, OwnedFd)> {
    sk::socketpair(
        sk::AddressFamily::Unix,
        sock_type(e.ty),
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|er| sys_err(e, "socketpair", er))
}

fn shutdown(s: BorrowedFd<'_>, how: sk::Shutdown) -> nix::Result<()> {
    match sk::shutdown(s.as_raw_fd(), how) {
        Err(nix::errno::Errno::ENOTCONN) => Ok(()),
        r => r,
    }
}

fn set_nonblock(fd: BorrowedFd<'_>) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fl = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK)).map(|_| ())
}

/// Bind `s` to `n`. A pathname whose socket file is still there (the
/// dumped process left it behind) is removed first; anything else at that
/// path is an error. Mode and owner of the file are set as dumped.
fn bind_name(e: &UnixEntry, s: BorrowedFd<'_>, n: &UnixName) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let UnixName::Path(p) = n else {
        return sk::bind(s.as_raw_fd(), &n.addr()?)
            .map_err(|er| Error::Refused(format!("{}: bind to {n}: {}", e.who(), er.desc())));
    };
    let path = fs_path(p, e.bind_dir.as_deref());
    if let Ok(md) = std::fs::symlink_metadata(&path) {
        let ours = md.file_type().is_socket() && e.file.as_ref().is_some_and(|f| same_file(&md, f));
        if !ours {
            return Err(Error::Refused(format!(
                "{}: {} exists and is not the socket file that was dumped; remove it to restore",
                e.who(),
                path.display()
            )));
        }
        std::fs::remove_file(&path).map_err(|er| Error::file(&path, er))?;
    }
    // A relative name is bound from the directory it was relative to, so
    // that getsockname(2) gives the same name back.
    let bound = match &e.bind_dir {
        Some(d) => {
            use std::os::unix::ffi::OsStrExt;
            let dir = std::path::Path::new(std::ffi::OsStr::from_bytes(d));
            let back = std::env::current_dir().map_err(|er| Error::file(".", er))?;
            std::env::set_current_dir(dir).map_err(|er| Error::file(dir, er))?;
            let r = sk::bind(s.as_raw_fd(), &n.addr()?);
            std::env::set_current_dir(&back).map_err(|er| Error::file(&back, er))?;
            r
        }
        None => sk::bind(s.as_raw_fd(), &n.addr()?),
    };
    bound.map_err(|er| Error::Refused(format!("{}: bind to {n}: {}", e.who(), er.desc())))?;
    if let Some(f) = &e.file {
        if let Some(mode) = f.mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|er| Error::file(&path, er))?;
        }
        if let Some((uid, gid)) = f.owner {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .map_err(|er| Error::file(&path, er))?;
        }
    }
    Ok(())
}

fn set_options(e: &UnixEntry, s: BorrowedFd<'_>) -> Result<()> {
    let o = &e.opts;
    let err = |what: &str, er: nix::Error| sys_err(e, what, er);
    if o.passcred {
        sk::setsockopt(&s, sockopt::PassCred, &true).map_err(|er| err("SO_PASSCRED", er))?;
    }
    // getsockopt reports twice what setsockopt was given (see socket(7));
    // the *FORCE variants pass over the sysctl caps when criu may.
    if o.sndbuf != 0 {
        let half = (o.sndbuf / 2) as usize;
        sk::setsockopt(&s, sockopt::SndBufForce, &half)
            .or_else(|_| sk::setsockopt(&s, sockopt::SndBuf, &half))
            .map_err(|er| err("SO_SNDBUF", er))?;
    }
    if o.rcvbuf != 0 {
        let half = (o.rcvbuf / 2) as usize;
        sk::setsockopt(&s, sockopt::RcvBufForce, &half)
            .or_else(|_| sk::setsockopt(&s, sockopt::RcvBuf, &half))
            .map_err(|er| err("SO_RCVBUF", er))?;
    }
    let tv =
        |us: u64| nix::sys::time::TimeVal::new((us / 1_000_000) as i64, (us % 1_000_000) as i64);
    if o.rcvtimeo_us != 0 {
        sk::setsockopt(&s, sockopt::ReceiveTimeout, &tv(o.rcvtimeo_us))
            .map_err(|er| err("SO_RCVTIMEO", er))?;
    }
    if o.sndtimeo_us != 0 {
        sk::setsockopt(&s, sockopt::SendTimeout, &tv(o.sndtimeo_us))
            .map_err(|er| err("SO_SNDTIMEO", er))?;
    }
    if o.peek_off >= 0 {
        sys::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, o.peek_off)
            .map_err(|er| sys_err(e, "SO_PEEK_OFF", er))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Descriptors in flight, standing in for the file table.
    #[derive(Default)]
    struct Table(Vec<OwnedFd>);

    impl Table {
        fn add(&mut self, f: OwnedFd) -> Result<FileRef> {
            self.0.push(f);
            Ok(self.0.len() as FileRef - 1)
        }
        fn get(&self, r: FileRef) -> Result<OwnedFd> {
            Ok(self.0[r as usize].try_clone().unwrap())
        }
    }

    fn dump_all(socks: &[&OwnedFd], t: &mut Table) -> Vec<UnixEntry> {
        let mut d = Dumper::new().unwrap();
        socks
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let cwd = std::env::current_dir().unwrap();
                d.dump(&format!("test fd {i}"), s.as_fd(), false, &cwd, &mut |f| {
                    t.add(f)
                })
                .unwrap()
            })
            .collect()
    }

    fn restore_all(es: &[UnixEntry], t: &Table) -> Vec<OwnedFd> {
        let mut r = Restorer::new(es);
        let fds: Vec<OwnedFd> = es.iter().map(|e| r.open(e).unwrap()).collect();
        r.finish(&mut |x| t.get(x)).unwrap();
        fds
    }

    fn send(s: &OwnedFd, data: &[u8], fds: &[RawFd]) {
        let c = [sk::ControlMessage::ScmRights(fds)];
        let cm: &[sk::ControlMessage] = if fds.is_empty() { &[] } else { &c };
        let n = sk::sendmsg::<UnixAddr>(
            s.as_raw_fd(),
            &[std::io::IoSlice::new(data)],
            cm,
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .unwrap();
        assert_eq!(n, data.len());
    }

    fn recv(s: &OwnedFd) -> (Vec<u8>, Vec<OwnedFd>) {
        let mut buf = vec![0u8; 1 << 16];
        let r = sys::recvmsg_fds(s.as_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).unwrap();
        (buf[..r.len].to_vec(), r.fds)
    }

    fn tmpdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn name_parse_and_display() {
        assert_eq!(UnixName::from_sun_path(b""), None);
        assert_eq!(
            UnixName::from_sun_path(b"\0ab\n"),
            Some(UnixName::Abstract(b"ab\n".to_vec()))
        );
        assert_eq!(
            UnixName::from_sun_path(b"/run/x\0"),
            Some(UnixName::Path(b"/run/x".to_vec()))
        );
        assert_eq!(UnixName::Abstract(b"ab\n".to_vec()).to_string(), "@ab\\n");
    }

    #[test]
    fn stream_pair_queues_both_ways_with_fd_in_flight_and_shutdown() {
        let (a, b) = sk::socketpair(
            sk::AddressFamily::Unix,
            sk::SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (pr, pw) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&pw, b"through the pipe").unwrap();
        send(&a, b"hello ", &[]);
        send(&a, b"b, with a pipe", &[pr.as_raw_fd()]);
        send(&a, b" and more", &[]);
        send(&b, b"to a", &[]);
        sk::shutdown(b.as_raw_fd(), sk::Shutdown::Write).unwrap();
        sk::setsockopt(&a, sockopt::PassCred, &true).unwrap();
        sk::setsockopt(&b, sockopt::SndBuf, &100_000usize).unwrap();
        drop(pr);
        let mut t = Table::default();
        let es = dump_all(&[&a, &b], &mut t);
        // Dump does not consume: the original still has its data.
        let (d, _) = recv(&b);
        assert_eq!(d, b"hello b, with a pipe");
        assert_eq!(es[0].peer, es[1].ino);
        assert_eq!(es[1].peer, es[0].ino);
        assert_eq!(es[0].ty, UnixType::Stream);
        assert_eq!(es[0].state, UnixState::Connected);
        // The descriptor goes with the last byte of its run.
        let runs: Vec<(&[u8], usize)> = es[1]
            .queue
            .iter()
            .map(|m| (&m.data[..], m.fds.len()))
            .collect();
        assert_eq!(
            runs,
            [
                (&b"hello b, with a pip"[..], 0),
                (b"e", 1),
                (b" and more", 0)
            ]
        );
        assert_eq!(es[1].queue[1].fds, vec![0]);
        assert_eq!(es[1].shutdown, SEND_SHUTDOWN);
        assert_eq!(es[0].shutdown, RCV_SHUTDOWN);
        assert!(es[0].opts.passcred);
        assert_eq!(es[0].opts.peek_off, -1);
        drop((a, b));

        let fds = restore_all(&es, &t);
        let (ra, rb) = (&fds[0], &fds[1]);
        // A short first read gets no descriptor, as in the original; the
        // rest of the write that carried it does.
        let mut six = [0u8; 6];
        let r = sys::recvmsg_fds(rb.as_fd(), &mut six, MsgFlags::MSG_DONTWAIT).unwrap();
        assert_eq!((&six[..r.len], r.fds.len()), (&b"hello "[..], 0));
        let (d, f) = recv(rb);
        assert_eq!(d, b"b, with a pipe");
        assert_eq!(f.len(), 1);
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(f[0].as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"through the pipe");
        assert_eq!(recv(rb).0, b" and more");
        assert_eq!(recv(ra).0, b"to a");
        assert_eq!(recv(ra).0, b"", "a sees the end of b's writes");
        let again = dump_all(&[ra, rb], &mut Table::default());
        assert_eq!(again[0].shutdown, RCV_SHUTDOWN);
        assert_eq!(again[1].shutdown, SEND_SHUTDOWN);
        assert!(again[0].opts.passcred);
        assert_eq!(again[1].opts.sndbuf, es[1].opts.sndbuf);
        assert_eq!(again[0].peer, again[1].ino);
    }

    #[test]
    fn target_peek_offset_is_kept() {
        let (a, b) = sk::socketpair(
            sk::AddressFamily::Unix,
            sk::SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        send(&a, b"0123456789", &[]);
        sys::setsockopt_int(b.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, 4).unwrap();
        let es = dump_all(&[&a, &b], &mut Table::default());
        assert_eq!(es[1].queue[0].data, b"0123456789");
        assert_eq!(es[1].opts.peek_off, 4);
        assert_eq!(
            sys::getsockopt_int(b.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap(),
            4
        );
        let fds = restore_all(&es, &Table::default());
        let mut buf = [0u8; 16];
        let n = sk::recv(fds[1].as_raw_fd(), &mut buf, MsgFlags::MSG_PEEK).unwrap();
        assert_eq!(&buf[..n], b"456789");
    }

    #[test]
    fn seqpacket_keeps_boundaries() {
        let (a, b) = sk::socketpair(
            sk::AddressFamily::Unix,
            sk::SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        for m in [&b"one"[..], b"", b"three"] {
            send(&a, m, &[]);
        }
        let es = dump_all(&[&a, &b], &mut Table::default());
        assert_eq!(es[1].ty, UnixType::Seqpacket);
        drop((a, b));
        let fds = restore_all(&es, &Table::default());
        for m in [&b"one"[..], b"", b"three"] {
            assert_eq!(recv(&fds[1]).0, m);
        }
    }

    #[test]
    fn dgram_bound_path_and_connected_sender() {
        let dir = tmpdir();
        let path = dir.path().join("d.sock");
        let srv = sk::socket(
            sk::AddressFamily::Unix,
            sk::SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let addr = UnixAddr::new(&path).unwrap();
        sk::bind(srv.as_raw_fd(), &addr).unwrap();
        let cli = sk::socket(
            sk::AddressFamily::Unix,
            sk::SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        sk::connect(cli.as_raw_fd(), &addr).unwrap();
        send(&cli, b"first", &[]);
        send(&cli, b"second", &[]);
        let es = dump_all(&[&srv, &cli], &mut Table::default());
        assert_eq!(
            es[0].name,
            Some(UnixName::Path(path.as_os_str().as_encoded_bytes().to_vec()))
        );
        assert_eq!(es[0].queue.len(), 2);
        assert_eq!(es[1].peer, es[0].ino);
        assert_eq!(es[1].state, UnixState::Connected);
        drop((srv, cli));
        // The socket file is left behind, as when a process is killed.
        assert!(path.exists());
        let fds = restore_all(&es, &Table::default());
        assert_eq!(recv(&fds[0]).0, b"first");
        assert_eq!(recv(&fds[0]).0, b"second");
        send(&fds[1], b"after", &[]);
        assert_eq!(recv(&fds[0]).0, b"after");
        let name: UnixAddr = sk::getsockname(fds[0].as_raw_fd()).unwrap();
        assert_eq!(name.path(), Some(path.as_path()));
    }

    #[test]
    fn listener_and_accepted_connection_keep_names() {
        let dir = tmpdir();
        let path = dir.path().join("l.sock");
        let l = sk::socket(
            sk::AddressFamily::Unix,
            sk::SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let addr = UnixAddr::new(&path).unwrap();
        sk::bind(l.as_raw_fd(), &addr).unwrap();
        sk::listen(&l, sk::Backlog::new(7).unwrap()).unwrap();
        let c = sk::socket(
            sk::AddressFamily::Unix,
            sk::SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        sk::connect(c.as_raw_fd(), &addr).unwrap();
        let a = sys::accept_cloexec(l.as_fd()).unwrap();
        send(&c, b"request", &[]);
        let es = dump_all(&[&c, &l, &a], &mut Table::default());
        assert_eq!(es[1].state, UnixState::Listening);
        assert_eq!(es[1].backlog, 7);
        drop((l, c, a));
        let fds = restore_all(&es, &Table::default());
        let n: UnixAddr = sk::getsockname(fds[2].as_raw_fd()).unwrap();
        assert_eq!(
            n.path(),
            Some(path.as_path()),
            "the accepted end has the listener's name"
        );
        let n: UnixAddr = sk::getpeername(fds[0].as_raw_fd()).unwrap();
        assert_eq!(n.path(), Some(path.as_path()));
        assert_eq!(recv(&fds[2]).0, b"request");
        // The listener still accepts.
        let c2 = sk::socket(
            sk::AddressFamily::Unix,
            sk::SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        sk::connect(c2.as_raw_fd(), &addr).unwrap();
        sys::accept_cloexec(fds[1].as_fd()).unwrap();
    }

    #[test]
    fn closed_peer_keeps_data_then_eof_and_abstract_name() {
        let name = format!("criu-test-{}", std::process::id());
        let s = sk::socket(
            sk::AddressFamily::Unix,
            sk::SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        sk::bind(
            s.as_raw_fd(),
            &UnixAddr::new_abstract(name.as_bytes()).unwrap(),
        )
        .unwrap();
        let (a, b) = sk::socketpair(
            sk::AddressFamily::Unix,
            sk::SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        send(&a, b"last words", &[]);
        drop(a);
        let es = dump_all(&[&s, &b], &mut Table::default());
        assert_eq!(
            es[0].name,
            Some(UnixName::Abstract(name.as_bytes().to_vec()))
        );
        assert_eq!(es[1].peer, 0);
        drop((s, b));
        let fds = restore_all(&es, &Table::default());
        assert_eq!(recv(&fds[1]).0, b"last words");
        assert_eq!(recv(&fds[1]).0, b"");
        let n: UnixAddr = sk::getsockname(fds[0].as_raw_fd()).unwrap();
        assert_eq!(n.as_abstract(), Some(name.as_bytes()));
    }

    #[test]
    fn peer_outside_is_refused_unless_allowed() {
        let (a, b) = sk::socketpair(
            sk::AddressFamily::Unix,
            sk::SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let mut es = dump_all(&[&a], &mut Table::default());
        let who = |ino: u64| format!("pid 7 fd 3 (socket:[{ino}])");
        let peer = es[0].peer;
        let e = check_peers(
            &mut es.iter_mut().collect::<Vec<_>>(),
            &who,
            &ExtUnix::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("pid 7 fd 3"), "{e}");
        assert!(e.contains(&format!("socket:[{peer}]")), "{e}");
        assert!(e.contains("--ext-unix-sk"), "{e}");
        // Allowed, but an unnamed peer cannot be reconnected.
        let ext = ExtUnix {
            all: false,
            inos: vec![peer],
        };
        let e = check_peers(&mut es.iter_mut().collect::<Vec<_>>(), &who, &ext)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no name to reconnect"), "{e}");
        // Both ends dumped: fine.
        let mut both = dump_all(&[&a, &b], &mut Table::default());
        check_peers(
            &mut both.iter_mut().collect::<Vec<_>>(),
            &who,
            &ExtUnix::default(),
        )
        .unwrap();
        assert!(!both[0].external);
    }

    #[test]
    fn external_named_dgram_peer_is_reconnected() {
        let dir = tmpdir();
        let path = dir.path().join("log.sock");
        let outside = sk::socket(
            sk::AddressFamily::Unix,
            sk::SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let addr = UnixAddr::new(&path).unwrap();
        sk::bind(outside.as_raw_fd(), &addr).unwrap();
        let c = sk::socket(
            sk::AddressFamily::Unix,
            sk::SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        sk::connect(c.as_raw_fd(), &addr).unwrap();
        let mut es = dump_all(&[&c], &mut Table::default());
        let ext = ExtUnix {
            all: true,
            inos: vec![],
        };
        check_peers(
            &mut es.iter_mut().collect::<Vec<_>>(),
            &|_| String::new(),
            &ext,
        )
        .unwrap();
        assert!(es[0].external);
        drop(c);
        let fds = restore_all(&es, &Table::default());
        send(&fds[0], b"log line", &[]);
        assert_eq!(recv(&outside).0, b"log line");
    }

    #[test]
    fn connections_not_accepted_yet() {
        let dir = tmpdir();
        let path = dir.path().join("p.sock");
        let stream = || {
            sk::socket(
                sk::AddressFamily::Unix,
                sk::SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .unwrap()
        };
        let l = stream();
        let addr = UnixAddr::new(&path).unwrap();
        sk::bind(l.as_raw_fd(), &addr).unwrap();
        sk::listen(&l, sk::Backlog::new(4).unwrap()).unwrap();
        let (c1, c2) = (stream(), stream());
        sk::connect(c1.as_raw_fd(), &addr).unwrap();
        sk::connect(c2.as_raw_fd(), &addr).unwrap();
        let who = |ino: u64| format!("pid 9 (socket:[{ino}])");
        // The listener without its clients: refused.
        let mut alone = dump_all(&[&l], &mut Table::default());
        assert_eq!(alone[0].pending.len(), 2);
        let e = check_peers(
            &mut alone.iter_mut().collect::<Vec<_>>(),
            &who,
            &ExtUnix::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not accepted yet"), "{e}");
        assert!(e.contains("outside the dumped tree"), "{e}");
        // A client without its listener: refused unless allowed.
        let mut client = dump_all(&[&c1], &mut Table::default());
        let e = check_peers(
            &mut client.iter_mut().collect::<Vec<_>>(),
            &who,
            &ExtUnix::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("has not accepted it yet"), "{e}");
        assert!(e.contains(path.to_str().unwrap()), "{e}");
        // All of them: the clients wait in the restored listener, in order.
        let mut es = dump_all(&[&c2, &l, &c1], &mut Table::default());
        check_peers(
            &mut es.iter_mut().collect::<Vec<_>>(),
            &who,
            &ExtUnix::default(),
        )
        .unwrap();
        assert_eq!(es[0].pending_on, es[1].ino);
        assert_eq!(es[1].pending, vec![es[2].ino, es[0].ino]);
        drop((l, c1, c2));
        let fds = restore_all(&es, &Table::default());
        let a1 = sys::accept_cloexec(fds[1].as_fd()).unwrap();
        let a2 = sys::accept_cloexec(fds[1].as_fd()).unwrap();
        send(&a1, b"to c1", &[]);
        send(&a2, b"to c2", &[]);
        assert_eq!(recv(&fds[2]).0, b"to c1");
        assert_eq!(recv(&fds[0]).0, b"to c2");
        // A client that sent data before being accepted is refused.
        let l = stream();
        let path2 = dir.path().join("q.sock");
        let addr2 = UnixAddr::new(&path2).unwrap();
        sk::bind(l.as_raw_fd(), &addr2).unwrap();
        sk::listen(&l, sk::Backlog::new(1).unwrap()).unwrap();
        let c = stream();
        sk::connect(c.as_raw_fd(), &addr2).unwrap();
        send(&c, b"early", &[]);
        let e = Dumper::new()
            .unwrap()
            .dump(
                "pid 9 fd 4",
                c.as_fd(),
                false,
                dir.path(),
                &mut |_| unreachable!(),
            )
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("pid 9 fd 4: "), "{e}");
        assert!(e.contains("not accepted yet"), "{e}");
    }

    #[test]
    fn datagram_sender_names_are_kept() {
        let dir = tmpdir();
        let dgram = || {
            sk::socket(
                sk::AddressFamily::Unix,
                sk::SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .unwrap()
        };
        let (d, a, anon) = (dgram(), dgram(), dgram());
        let (dp, ap) = (dir.path().join("d.sock"), dir.path().join("a.sock"));
        sk::bind(d.as_raw_fd(), &UnixAddr::new(&dp).unwrap()).unwrap();
        sk::bind(a.as_raw_fd(), &UnixAddr::new(&ap).unwrap()).unwrap();
        let to = UnixAddr::new(&dp).unwrap();
        sk::sendto(a.as_raw_fd(), b"from a", &to, MsgFlags::empty()).unwrap();
        sk::sendto(anon.as_raw_fd(), b"anon", &to, MsgFlags::empty()).unwrap();
        let es = dump_all(&[&d, &a], &mut Table::default());
        let a_name = Some(UnixName::Path(ap.as_os_str().as_encoded_bytes().to_vec()));
        assert_eq!(es[0].queue[0].from, a_name);
        assert_eq!(es[0].queue[1].from, None);
        drop((d, a, anon));
        let fds = restore_all(&es, &Table::default());
        let mut buf = [0u8; 16];
        let (n, from) = sk::recvfrom::<UnixAddr>(fds[0].as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"from a");
        assert_eq!(
            from.and_then(|f| f.path().map(|p| p.to_path_buf())),
            Some(ap)
        );
        let (n, from) = sk::recvfrom::<UnixAddr>(fds[0].as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"anon");
        assert!(from.is_none_or(|f| f.path().is_none()));
    }
}
