//! Descriptors (`/proc/PID/fd`, `/proc/PID/fdinfo`, see proc(5)) and the
//! filesystem context (cwd, root, umask).

use crate::error::{Error, Result};
use crate::fdkind::inet::{self, InetEntry, InetState};
use crate::fdkind::unix;
use crate::fdkind::{epoll, event, fanotify, inotify, memfd, pipe};
use crate::images::types::{
    FdEntry, FileEntry, FileId, FileKind, FileLock, FileOwner, FsEntry, GhostMap, LockClass,
};
use crate::images::ImageDir;
use crate::netlock::{self, NetLock};
use crate::proc::{self, Status};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Character devices reopened by path.
const DEVICES: [&str; 6] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// What the options of `criu dump` say about descriptors.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// `--shell-job`: the tree runs on the caller's terminal.
    pub shell_job: bool,
    /// `--file-locks`: save file locks (else a held lock refuses the dump).
    pub file_locks: bool,
    /// `--ghost-limit`: largest deleted-but-open file saved, in bytes.
    pub ghost_limit: u64,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            shell_job: false,
            file_locks: false,
            ghost_limit: DEFAULT_GHOST_LIMIT,
        }
    }
}

/// Default `--ghost-limit`: 1 MiB, as upstream criu.
pub const DEFAULT_GHOST_LIMIT: u64 = 1 << 20;

/// The open file descriptions of the whole tree, collected process by
/// process: each description gets one [`FileEntry`], whichever processes
/// and descriptor numbers refer to it.
pub struct FileTable {
    /// One (pid, fd) per description seen so far, sorted in the kernel's
    /// kcmp(2) `KCMP_FILE` order, with the description's id.
    reps: Vec<(i32, i32, u32)>,
    /// The descriptions, by id.
    pub entries: Vec<FileEntry>,
    /// A pidfd of the process whose descriptors are being collected.
    pidfd: Option<(i32, OwnedFd)>,
    opts: FileOptions,
    dir: ImageDir,
    /// Deleted files saved so far (by descriptors or mappings): (dev, ino)
    /// to the file, whose `data` numbers its `ghost-DATA.img`.
    ghosts: HashMap<(u64, u64), GhostMap>,
    /// POSIX locks recorded so far: (pid, dev, ino, start, end, write); a
    /// process's lock shows on each of its descriptors of the file.
    posix: HashSet<(i32, u64, u64, u64, Option<u64>, bool)>,
    /// Per id: the first (pid, fd) that holds it (pid 0: only in flight in
    /// a socket's queue) and whether every holder has it as fd 0, 1 or 2.
    holders: Vec<(i32, i32, bool)>,
    /// criu's own duplicates of descriptors in flight in socket queues,
    /// kept open so that kcmp(2) can compare others with them.
    own: Vec<OwnedFd>,
    /// Reads UNIX sockets (opened on the first one).
    unix: Option<unix::Dumper>,
    pipes: pipe::PipeDumper,
    memfds: memfd::MemfdDumper,
    /// The descriptions of each pipe, by pipe (see [`PipeUse`]).
    pipe_uses: HashMap<(Option<String>, u64), PipeUse>,
    /// Terminals seen so far.
    pub tty: crate::fdkind::tty::Collector,
    /// How network sockets are dumped.
    pub inet: inet::DumpOpts,
    /// Connections in repair mode and the network lock.
    pub hold: InetHold,
}

/// The descriptions of one pipe in the tree: a pipe held only at
/// descriptors 0 to 2 and only with one access mode has its other end
/// outside the tree (a shell's pipe, a test harness's) and becomes
/// [`FileKind::Inherited`].
#[derive(Default)]
struct PipeUse {
    /// Access modes seen (bit `O_RDONLY + 1`, `O_WRONLY + 1`, `O_RDWR + 1`).
    modes: u32,
    /// Its descriptions.
    ids: Vec<u32>,
}

/// What the dump of network sockets leaves behind until the tasks are
/// killed or let go: established connections in TCP repair mode (criu's
/// duplicates of them) and the network lock over them. Dropping it takes
/// the sockets out of repair mode (before the tasks run on) and removes
/// the lock; [`InetHold::keep`] leaves both for a dump that kills the
/// tasks, so that their sockets close without a word to the peer and the
/// peer's packets are dropped until the restore.
#[derive(Default)]
pub struct InetHold {
    method: netlock::Method,
    lock: Option<NetLock>,
    lock_name: String,
    repaired: Vec<(OwnedFd, InetEntry)>,
}

impl InetHold {
    /// Lock with `method`, in an nftables table named `name`.
    pub fn configure(&mut self, method: netlock::Method, name: String) {
        self.method = method;
        self.lock_name = name;
    }

    /// Lock the connection `local` - `peer` (unless `--network-lock skip`).
    fn lock(&mut self, local: inet::Addr, peer: inet::Addr) -> Result<()> {
        if self.method == netlock::Method::Skip {
            return Ok(());
        }
        let name = self.lock_name.clone();
        self.lock
            .get_or_insert_with(|| NetLock::new(name))
            .add(local, peer)
    }

    /// The name of the lock table if any connection is locked.
    pub fn lock_table(&self) -> Option<String> {
        self.lock
            .as_ref()
            .filter(|l| l.is_taken())
            .map(|l| l.table().to_string())
    }

    /// The tasks were killed: leave the lock for the restore.
    pub fn keep(mut self) {
        if let Some(l) = self.lock.take() {
            l.keep();
        }
        // The sockets stay in repair mode; criu's duplicates just close.
        self.repaired.clear();
    }
}

impl Drop for InetHold {
    fn drop(&mut self) {
        for (fd, e) in self.repaired.drain(..) {
            if let Err(err) = inet::release(fd.as_fd(), &e) {
                crate::error!("{}: {err}", e.describe());
            }
        }
        // Then the lock goes (NetLock's drop).
        self.lock.take();
    }
}

impl FileTable {
    /// An empty table; extra data (ghost files) goes to `dir`.
    pub fn new(opts: FileOptions, dir: &ImageDir) -> Self {
        FileTable {
            reps: Vec::new(),
            entries: Vec::new(),
            pidfd: None,
            opts,
            dir: dir.clone(),
            ghosts: HashMap::new(),
            posix: HashSet::new(),
            holders: Vec::new(),
            own: Vec::new(),
            unix: None,
            pipes: pipe::PipeDumper::new(),
            memfds: memfd::MemfdDumper::new(dir.path()),
            pipe_uses: HashMap::new(),
            tty: Default::default(),
            inet: inet::DumpOpts::default(),
            hold: InetHold::default(),
        }
    }

    /// Finish the table once every process is collected: pipes whose
    /// other end is outside the tree (see [`PipeUse`]) become
    /// [`FileKind::Inherited`], with a warning.
    pub fn finish(&mut self) {
        for u in self.pipe_uses.values() {
            let one_way =
                u.modes == 1 << (libc::O_RDONLY + 1) || u.modes == 1 << (libc::O_WRONLY + 1);
            if !one_way || !u.ids.iter().all(|&id| self.holders[id as usize].2) {
                continue;
            }
            for &id in &u.ids {
                let e = &mut self.entries[id as usize];
                let FileKind::Pipe(p) = &e.kind else { continue };
                let was = match &p.fifo {
                    Some(path) => path.clone(),
                    None => format!("pipe:[{}]", p.ino),
                };
                crate::warn!(
                    "{was} is a standard descriptor whose other end is not dumped; after restore it will be the restoring criu's own descriptor of the same number"
                );
                e.kind = FileKind::Inherited { was };
            }
        }
    }

    /// The kinds with state of their own (see [`crate::fdkind`]), dumped
    /// from a duplicate of the descriptor; `None` for the others.
    fn special(&mut self, cur: &Current<'_>) -> Result<Option<FileKind>> {
        let (pid, fd, link, fdinfo) = (cur.pid, cur.fd, cur.link, cur.fdinfo);
        let named = |e: Error| match e {
            Error::Unsupported(m) if !m.starts_with("pid ") => {
                Error::Unsupported(format!("pid {pid} fd {fd}: {m}"))
            }
            Error::File { path, source } => {
                Error::Unsupported(format!("pid {pid} fd {fd}: {}: {source}", path.display()))
            }
            Error::Parse { path, detail } => Error::Parse {
                path: proc::path(pid, &format!("fdinfo/{fd}")),
                detail: format!("{}: {detail}", path.display()),
            },
            other => other,
        };
        let is_fifo = || {
            link.starts_with('/')
                && memfd::memfd_name(link).is_none()
                && std::fs::metadata(proc::path(pid, &format!("fd/{fd}")))
                    .is_ok_and(|m| m.file_type().is_fifo())
        };
        let kind = match link {
            l if l.starts_with("pipe:") || is_fifo() => {
                let d = self.take_fd(pid, fd)?;
                let e = self.pipes.dump(d.as_fd(), fdinfo, link).map_err(named)?;
                FileKind::Pipe(e)
            }
            "anon_inode:[eventfd]" => {
                FileKind::Eventfd(event::dump_eventfd(fdinfo).map_err(named)?)
            }
            "anon_inode:[signalfd]" => {
                FileKind::Signalfd(event::dump_signalfd(fdinfo).map_err(named)?)
            }
            "anon_inode:[timerfd]" => {
                let d = self.take_fd(pid, fd)?;
                FileKind::Timerfd(event::dump_timerfd(d.as_fd(), fdinfo).map_err(named)?)
            }
            "anon_inode:[eventpoll]" => {
                FileKind::Epoll(epoll::dump(pid, fd, fdinfo).map_err(named)?)
            }
            "anon_inode:inotify" => {
                let d = self.take_fd(pid, fd)?;
                let hints = open_paths(pid);
                FileKind::Inotify(inotify::dump(pid, d.as_fd(), fdinfo, &hints).map_err(named)?)
            }
            "anon_inode:[fanotify]" => {
                let d = self.take_fd(pid, fd)?;
                let hints = open_paths(pid);
                FileKind::Fanotify(fanotify::dump(pid, d.as_fd(), fdinfo, &hints).map_err(named)?)
            }
            l if memfd::memfd_name(l).is_some() => {
                let d = self.take_fd(pid, fd)?;
                FileKind::Memfd(self.memfds.dump(d.as_fd(), fdinfo, link).map_err(named)?)
            }
            _ => return Ok(None),
        };
        if let FileKind::Pipe(p) = &kind {
            let id = self.entries.len() as u32;
            let key = (p.fifo.clone(), p.ino);
            let u = self.pipe_uses.entry(key).or_default();
            u.modes |= 1 << ((p.flags as i32 & libc::O_ACCMODE) + 1);
            u.ids.push(id);
        }
        Ok(Some(kind))
    }

    /// Collect every descriptor of `pid`, in fd order, adding the
    /// descriptions not seen yet (in this or an earlier process) to the
    /// table.
    ///
    /// Errors: a descriptor of an unsupported kind (naming pid, fd and
    /// kind), unreadable /proc entries.
    pub fn collect(&mut self, pid: i32) -> Result<Vec<FdEntry>> {
        let dir = proc::path(pid, "fd");
        let mut fds: Vec<i32> = std::fs::read_dir(&dir)
            .map_err(|e| Error::proc(&dir, e))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();

        let mut out: Vec<FdEntry> = Vec::new();
        for fd in fds {
            let link = proc::read_link(&proc::path(pid, &format!("fd/{fd}")))?;
            let ipath = proc::path(pid, &format!("fdinfo/{fd}"));
            let text = proc::read_text(&ipath)?;
            let info = proc::parse_fdinfo(&text).map_err(|d| Error::parse(&ipath, d))?;
            let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;

            // The same open file description as a descriptor seen before?
            let id = match self.find(pid, fd) {
                Ok(id) => {
                    self.holders[id as usize].2 &= fd <= 2;
                    id
                }
                Err(at) => {
                    let cur = Current {
                        pid,
                        fd,
                        link: &link,
                        info: &info,
                        fdinfo: &text,
                        flags: info.flags & !(libc::O_CLOEXEC as u32),
                    };
                    let mut unix_id = None;
                    let mut inet_kind = None;
                    if link.starts_with("socket:") {
                        let sock = self.take_fd(pid, fd)?;
                        if is_unix(&sock) {
                            let cwd = proc::read_link(&proc::path(pid, "cwd"))?;
                            let who = format!("pid {pid} fd {fd}");
                            unix_id =
                                Some(self.add_unix(&who, sock, cur.flags, &cwd, at, (pid, fd))?);
                        } else {
                            inet_kind = self.inet_socket(pid, fd, sock)?;
                        }
                    }
                    match unix_id {
                        Some(id) => id,
                        None => {
                            let kind = match inet_kind {
                                Some(k) => k,
                                None => match self.special(&cur)? {
                                    Some(k) => k,
                                    None => self.classify(&cur)?,
                                },
                            };
                            let owner = self.owner(&cur, &kind)?;
                            self.push(kind, owner, at, (pid, fd))
                        }
                    }
                }
            };
            self.add_locks(pid, fd, &link, &info, id)?;
            self.tty.note(pid, fd, id, &self.entries[id as usize].kind);
            out.push(FdEntry { fd, cloexec, id });
        }
        Ok(out)
    }

    /// A TCP or UDP socket at `fd` of `pid`, dumped through a duplicate;
    /// `None` when `dup` is not an IPv4 or IPv6 socket. An established
    /// connection is locked (see [`InetHold`]) before it is read.
    ///
    /// Errors: those of [`inet::dump`], naming pid and fd.
    fn inet_socket(&mut self, pid: i32, fd: i32, dup: OwnedFd) -> Result<Option<FileKind>> {
        let domain = crate::sys::getsockopt_int(dup.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN)
            .unwrap_or(-1);
        if domain != libc::AF_INET && domain != libc::AF_INET6 {
            return Ok(None);
        }
        let name = |e: Error| match e {
            Error::Unsupported(m) => Error::Unsupported(format!("pid {pid} fd {fd}: {m}")),
            Error::Refused(m) => Error::Refused(format!("pid {pid} fd {fd}: {m}")),
            e => e,
        };
        if self.inet.tcp_established && !self.inet.tcp_close {
            if let Some((local, peer)) = inet::connection(dup.as_fd()) {
                if !inet::has_net_admin() {
                    return Err(Error::Refused(format!(
                        "pid {pid} fd {fd}: TCP connection {local} -> {peer} is established; saving it needs CAP_NET_ADMIN (TCP repair mode and the network lock), which this criu lacks (setuid mode cannot save connections yet); dump it as root, or with --tcp-close to restore it closed"
                    )));
                }
                self.hold.lock(local, peer).map_err(name)?;
            }
        }
        let e = inet::dump(dup.as_fd(), &self.inet).map_err(name)?;
        crate::info!("pid {pid} fd {fd}: {}", e.describe());
        if matches!(e.state, InetState::Established(_)) {
            self.hold.repaired.push((dup, e.clone()));
        }
        Ok(Some(FileKind::Inet(e)))
    }

    /// A duplicate, in criu, of descriptor `fd` of `pid` (same open file
    /// description), for the kinds whose state is read through the
    /// description itself (pipe contents, socket queues, ...). See
    /// pidfd_getfd(2): it needs the same ptrace access criu has to the task
    /// anyway (in setuid mode the task is the caller's own and dumpable).
    ///
    /// Errors: [`Error::Unsupported`] naming pid, fd and the errno.
    pub fn take_fd(&mut self, pid: i32, fd: i32) -> Result<OwnedFd> {
        let fail = |what: &str, e: std::io::Error| {
            Error::Unsupported(format!("pid {pid} fd {fd}: {what}: {e}"))
        };
        if self.pidfd.as_ref().is_none_or(|(p, _)| *p != pid) {
            let pf = crate::sys::pidfd_open(pid).map_err(|e| fail("pidfd_open", e))?;
            self.pidfd = Some((pid, pf));
        }
        let (_, pf) = self.pidfd.as_ref().expect("set just above");
        crate::sys::pidfd_getfd(pf, fd).map_err(|e| fail("pidfd_getfd", e))
    }

    /// Add a new description held by `holder` (pid, fd) at `at` in the
    /// kcmp order; pid 0 is criu itself, holding a descriptor in flight.
    fn push(
        &mut self,
        kind: FileKind,
        owner: Option<FileOwner>,
        at: usize,
        holder: (i32, i32),
    ) -> u32 {
        let id = self.entries.len() as u32;
        self.entries.push(FileEntry {
            id,
            kind,
            owner,
            locks: Vec::new(),
        });
        let pid = match holder.0 {
            0 => std::process::id() as i32,
            p => p,
        };
        self.reps.insert(at, (pid, holder.1, id));
        self.holders
            .push((holder.0, holder.1, holder.0 != 0 && holder.1 <= 2));
        id
    }

    /// Add the UNIX socket `sock` (criu's duplicate of `holder`'s
    /// descriptor, or a descriptor in flight), then every descriptor in
    /// flight in its queue. Its id is taken before the queue is read, so a
    /// socket in flight in its own queue refers to itself.
    fn add_unix(
        &mut self,
        who: &str,
        sock: OwnedFd,
        flags: u32,
        cwd: &str,
        at: usize,
        holder: (i32, i32),
    ) -> Result<u32> {
        let placeholder = FileKind::Inherited {
            was: "socket being read".into(),
        };
        let id = self.push(placeholder, None, at, holder);
        let mut dumper = match self.unix.take() {
            Some(d) => d,
            None => unix::Dumper::new()?,
        };
        let mut inflight: Vec<OwnedFd> = Vec::new();
        let nonblock = flags & libc::O_NONBLOCK as u32 != 0;
        let r = dumper.dump(
            who,
            sock.as_fd(),
            nonblock,
            std::path::Path::new(cwd),
            &mut |f| {
                inflight.push(f);
                Ok(inflight.len() as u32 - 1)
            },
        );
        self.unix = Some(dumper);
        let mut e = r?;
        let ino = e.ino;
        let mut ids = Vec::with_capacity(inflight.len());
        for f in inflight {
            ids.push(self.add_inflight(f, ino)?);
        }
        for m in &mut e.queue {
            for r in &mut m.fds {
                *r = ids[*r as usize];
            }
        }
        self.entries[id as usize].kind = FileKind::Unix(e);
        Ok(id)
    }

    /// The id of a descriptor found in flight in the queue of socket
    /// `ino`, adding its description if it is new. criu keeps `f` open:
    /// its number is the description's representative for kcmp(2).
    fn add_inflight(&mut self, f: OwnedFd, ino: u64) -> Result<u32> {
        let me = std::process::id() as i32;
        let raw = f.as_raw_fd();
        let at = match self.find(me, raw) {
            Ok(id) => {
                self.holders[id as usize].2 = false;
                return Ok(id);
            }
            Err(at) => at,
        };
        let who = format!("a descriptor in flight in socket:[{ino}]");
        let link = proc::read_link(&proc::path(me, &format!("fd/{raw}")))?;
        let ipath = proc::path(me, &format!("fdinfo/{raw}"));
        let text = proc::read_text(&ipath)?;
        let info = proc::parse_fdinfo(&text).map_err(|d| Error::parse(&ipath, d))?;
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        if link.starts_with("socket:") && is_unix(&f) {
            let g = f
                .try_clone()
                .map_err(|e| Error::Unsupported(format!("{who}: dup: {e}")))?;
            self.own.push(f);
            return self.add_unix(&who, g, flags, "/", at, (0, raw));
        }
        let cur = Current {
            pid: me,
            fd: raw,
            link: &link,
            info: &info,
            fdinfo: &text,
            flags,
        };
        let rename = |e: Error| {
            let msg = e.to_string();
            let rest = msg.split_once(": ").map(|x| x.1).unwrap_or(&msg);
            Error::Unsupported(format!("{who}: {rest}"))
        };
        let kind = match self.special(&cur).map_err(rename)? {
            Some(k) => k,
            None => self.classify(&cur).map_err(rename)?,
        };
        // Restore makes descriptors in flight in criu, after every process:
        // these kinds are made only for a process that holds them.
        let what = match kind {
            FileKind::Inherited { .. } => Some("this kind of descriptor"),
            FileKind::Ghost { .. } => Some("a deleted file"),
            FileKind::Tty(_) => Some("a terminal"),
            _ => None,
        };
        if let Some(what) = what {
            return Err(Error::Unsupported(format!(
                "{who} ({link}) is {what}, which cannot be restored while only in flight; receive or close it in the process before dumping"
            )));
        }
        let owner = self.owner(&cur, &kind).map_err(rename)?;
        self.own.push(f);
        Ok(self.push(kind, owner, at, (0, raw)))
    }

    /// After every process: check that the peer of every UNIX socket is in
    /// the table or allowed outside by `ext`; a socket used only as fd 0, 1
    /// or 2 whose peer is outside is left to be inherited at restore, as
    /// other standard descriptors are.
    ///
    /// Errors: [`Error::Refused`] naming pid, fd, socket and peer.
    pub fn check_unix(&mut self, ext: &unix::ExtUnix) -> Result<()> {
        let inos: HashSet<u64> = self
            .entries
            .iter()
            .filter_map(|e| match &e.kind {
                FileKind::Unix(u) => Some(u.ino),
                _ => None,
            })
            .collect();
        for (e, &(pid, fd, stdio)) in self.entries.iter_mut().zip(&self.holders) {
            if let FileKind::Unix(u) = &e.kind {
                if stdio && u.peer != 0 && !inos.contains(&u.peer) {
                    let was = format!("socket:[{}]", u.ino);
                    crate::warn!(
                        "pid {pid} fd {fd} is {was}, whose peer is not dumped; after restore fd {fd} will be the restoring criu's own fd {fd}"
                    );
                    e.kind = FileKind::Inherited { was };
                }
            }
        }
        let mut who: HashMap<u64, String> = HashMap::new();
        let mut socks: Vec<&mut unix::UnixEntry> = Vec::new();
        for (e, &(pid, fd, _)) in self.entries.iter_mut().zip(&self.holders) {
            if let FileKind::Unix(u) = &mut e.kind {
                let w = if pid == 0 {
                    "a socket in flight".to_string()
                } else {
                    format!("pid {pid} fd {fd}")
                };
                who.insert(u.ino, w);
                socks.push(u);
            }
        }
        unix::check_peers(&mut socks, &|ino| who[&ino].clone(), ext)
    }

    /// Look (`pid`, `fd`) up among the representatives: `Ok` with the id of
    /// the same open file description, or `Err` with where it goes in the
    /// order. If the kernel gives no order (kcmp says "unordered" or
    /// fails), compare with every one instead.
    fn find(&self, pid: i32, fd: i32) -> std::result::Result<u32, usize> {
        let reps = &self.reps;
        let mut lo = 0;
        let mut hi = reps.len();
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (rpid, rfd, id) = reps[mid];
            match crate::sys::kcmp_file_order(rpid, rfd, pid, fd) {
                Some(std::cmp::Ordering::Equal) => return Ok(id),
                Some(std::cmp::Ordering::Less) => lo = mid + 1,
                Some(std::cmp::Ordering::Greater) => hi = mid,
                None => {
                    return reps
                        .iter()
                        .find(|&&(rp, rf, _)| {
                            crate::sys::same_file_description(rp, rf, pid, fd).unwrap_or(false)
                        })
                        .map(|r| r.2)
                        .ok_or(reps.len())
                }
            }
        }
        Err(lo)
    }

    /// The owner and signal of a file or device description (`F_GETOWN_EX`
    /// and `F_GETSIG` on a duplicate), `None` when neither is set.
    fn owner(&mut self, cur: &Current<'_>, kind: &FileKind) -> Result<Option<FileOwner>> {
        if !matches!(
            kind,
            FileKind::Reg { .. }
                | FileKind::Ghost { .. }
                | FileKind::Device { .. }
                | FileKind::Pipe(_)
                | FileKind::Eventfd(_)
                | FileKind::Signalfd(_)
                | FileKind::Timerfd(_)
                | FileKind::Epoll(_)
                | FileKind::Inotify(_)
                | FileKind::Fanotify(_)
                | FileKind::Memfd(_)
        ) || cur.flags & libc::O_PATH as u32 != 0
        {
            // An O_PATH descriptor has no owner (fcntl says EBADF).
            return Ok(None);
        }
        let copy = self.take_fd(cur.pid, cur.fd)?;
        let (kind, pid, signal) = crate::sys::file_owner(&copy).map_err(|e| {
            Error::Unsupported(format!(
                "pid {} fd {}: reading its owner (F_GETOWN_EX): {e}",
                cur.pid, cur.fd
            ))
        })?;
        Ok((pid != 0 || signal != 0).then_some(FileOwner { kind, pid, signal }))
    }

    /// Record the locks the `lock:` lines of the descriptor show; without
    /// `--file-locks` any lock refuses the dump.
    fn add_locks(
        &mut self,
        pid: i32,
        fd: i32,
        link: &str,
        info: &proc::FdInfo,
        id: u32,
    ) -> Result<()> {
        for l in &info.locks {
            if !self.opts.file_locks {
                return Err(Error::Unsupported(format!(
                    "pid {pid} fd {fd}: {link} is locked ({} {} lock); dump with --file-locks to save file locks",
                    l.class, l.access
                )));
            }
            let write = l.access == "WRITE";
            let class = match l.class.as_str() {
                // Of this process, on the inode; shown on each of its
                // descriptors of the file: once is enough.
                "POSIX" => {
                    if l.pid != pid || !self.posix.insert((pid, 0, info.ino, l.start, l.end, write))
                    {
                        continue;
                    }
                    LockClass::Posix { pid }
                }
                "FLOCK" => LockClass::Flock,
                "OFDLCK" => LockClass::Ofd,
                "LEASE" if l.mode == "ACTIVE" => LockClass::Lease,
                other => {
                    return Err(Error::Unsupported(format!(
                        "pid {pid} fd {fd}: {link} has a {other} {} lock, which cannot be saved",
                        l.mode
                    )))
                }
            };
            let lock = FileLock {
                class,
                write,
                start: l.start,
                end: l.end,
            };
            let locks = &mut self.entries[id as usize].locks;
            if !locks.contains(&lock) {
                locks.push(lock);
            }
        }
        Ok(())
    }

    fn classify(&mut self, cur: &Current<'_>) -> Result<FileKind> {
        let (pid, fd, link, flags) = (cur.pid, cur.fd, cur.link, cur.flags);
        let unsupported = |what: String| {
            Err(Error::Unsupported(format!(
                "pid {pid} fd {fd}: {what} ({link}) is not supported yet; close it in the process (or start it without it) before dumping"
            )))
        };
        if crate::fdkind::pidfd::is_pidfd(link) {
            return Ok(FileKind::Pidfd(crate::fdkind::pidfd::dump(
                pid, fd, cur.fdinfo, flags,
            )?));
        }
        if !link.starts_with('/') {
            // pipe:[N], socket:[N], anon_inode:[eventfd], ...
            if fd <= 2 && link.starts_with("socket:") {
                crate::warn!(
                    "pid {pid} fd {fd} is {link}, whose other end is not dumped; after restore fd {fd} will be the restoring criu's own fd {fd}"
                );
                return Ok(FileKind::Inherited {
                    was: link.to_string(),
                });
            }
            // anon_inode:[io_uring], anon_inode:bpf-map: name the object.
            let kind = match link.strip_prefix("anon_inode:") {
                Some(k) => k.trim_start_matches('[').trim_end_matches(']'),
                None => link.split(':').next().unwrap_or(link),
            };
            let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            return unsupported(format!("{article} {kind} descriptor"));
        }
        if crate::fdkind::tty::is_terminal(link) {
            let dup = self.take_fd(pid, fd)?;
            let id = self.entries.len() as u32;
            let shell_job = self.opts.shell_job;
            return self.tty.classify(id, pid, fd, link, flags, dup, shell_job);
        }
        // Metadata of the open file itself, not whatever the path names now.
        let fdpath = proc::path(pid, &format!("fd/{fd}"));
        let md = std::fs::metadata(&fdpath).map_err(|e| Error::proc(&fdpath, e))?;
        let ft = md.file_type();
        if ft.is_char_device() {
            if DEVICES.contains(&link) {
                return Ok(FileKind::Device {
                    path: link.to_string(),
                    flags,
                });
            }
            return unsupported("a character device".into());
        }
        if ft.is_file() && md.nlink() == 0 {
            return self.ghost(cur, &md);
        }
        if ft.is_file() || ft.is_dir() {
            if md.nlink() == 0 || link.ends_with(" (deleted)") {
                return unsupported("a deleted directory".into());
            }
            return Ok(FileKind::Reg {
                file: FileId {
                    path: link.to_string(),
                    size: md.size(),
                    dev: md.dev(),
                    ino: md.ino(),
                    mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                },
                flags,
                pos: cur.info.pos,
            });
        }
        if ft.is_fifo() {
            if fd <= 2 {
                return Ok(FileKind::Inherited {
                    was: link.to_string(),
                });
            }
            return unsupported("a FIFO".into());
        }
        unsupported("this kind of file".into())
    }

    /// A regular file with no name left: save its contents once (per
    /// inode) into `ghost-DATA.img`, up to `--ghost-limit` bytes.
    fn ghost(&mut self, cur: &Current<'_>, md: &std::fs::Metadata) -> Result<FileKind> {
        let (pid, fd) = (cur.pid, cur.fd);
        let path = cur
            .link
            .strip_suffix(" (deleted)")
            .unwrap_or(cur.link)
            .to_string();
        let key = (md.dev(), md.ino());
        let data = match self.ghosts.get(&key) {
            Some(g) => g.data,
            None => {
                // A new read-only description through the magic link (the
                // process's own may be write-only); its duplicate if that
                // cannot be opened. Reading with pread moves no offset.
                let reader = match std::fs::File::open(proc::path(pid, &format!("fd/{fd}"))) {
                    Ok(f) => OwnedFd::from(f),
                    Err(_) => self.take_fd(pid, fd)?,
                };
                let who = format!("pid {pid} fd {fd}");
                self.save_ghost(&who, "was deleted while open", &path, &reader, md)?
                    .data
            }
        };
        Ok(FileKind::Ghost {
            path,
            data,
            size: md.size(),
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            flags: cur.flags,
            pos: cur.info.pos,
        })
    }
}

impl FileTable {
    /// Save deleted file `path` (metadata `md`, read through `reader`)
    /// into a new `ghost-DATA.img`, up to `--ghost-limit` bytes; `who`
    /// and `how` name it in messages.
    ///
    /// Errors: over the limit, or reading and writing failed.
    fn save_ghost(
        &mut self,
        who: &str,
        how: &str,
        path: &str,
        reader: &OwnedFd,
        md: &std::fs::Metadata,
    ) -> Result<GhostMap> {
        if md.size() > self.opts.ghost_limit {
            return Err(Error::Unsupported(format!(
                "{who}: {path} {how} and holds {} bytes, over the --ghost-limit of {} bytes; dump with a larger --ghost-limit",
                md.size(),
                self.opts.ghost_limit
            )));
        }
        let data = self.ghosts.len() as u32;
        let out = self.dir.ghost(data);
        save_ghost(reader, md.size(), &out).map_err(|e| {
            Error::Unsupported(format!(
                "{who}: saving deleted file {path} to {}: {e}",
                out.display()
            ))
        })?;
        crate::info!("{who}: deleted file {path}, {} bytes saved", md.size());
        let g = GhostMap {
            path: path.to_string(),
            data,
            size: md.size(),
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        };
        self.ghosts.insert((md.dev(), md.ino()), g.clone());
        Ok(g)
    }

    /// A description, in criu, of the file mapped at `v` in `pid`: a new
    /// read-only one through `/proc/PID/map_files/START-END` (see proc(5);
    /// it needs `CAP_CHECKPOINT_RESTORE`, which criu lacks in setuid mode),
    /// else a duplicate of a descriptor of the process on the same inode;
    /// `None` when neither is there.
    ///
    /// Errors: taking the process's descriptor failed.
    fn mapped_file(&mut self, pid: i32, v: &proc::SmapsVma) -> Result<Option<OwnedFd>> {
        let mf = proc::path(pid, &format!("map_files/{:x}-{:x}", v.start, v.end));
        match std::fs::File::open(&mf) {
            Ok(f) => return Ok(Some(OwnedFd::from(f))),
            Err(e) => crate::debug!("{}: {e}; looking for a descriptor instead", mf.display()),
        }
        let dir = proc::path(pid, "fd");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(None);
        };
        let mut fds: Vec<i32> = rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        for fd in fds {
            let p = proc::path(pid, &format!("fd/{fd}"));
            let same = std::fs::read_link(&p).is_ok_and(|l| l.as_os_str() == v.name.as_str())
                && std::fs::metadata(&p).is_ok_and(|m| m.ino() == v.inode);
            if same {
                return self.take_fd(pid, fd).map(Some);
            }
        }
        Ok(None)
    }

    /// The refusal for a mapping whose file criu cannot open.
    fn unopenable(pid: i32, v: &proc::SmapsVma, what: &str) -> Error {
        Error::Unsupported(format!(
            "pid {pid}: mapping {:#x}-{:#x} of {what} {}: criu cannot read its file: /proc/{pid}/map_files needs CAP_CHECKPOINT_RESTORE (criu runs as the user in setuid mode) and the process has no descriptor of it open; keep one open in the process, or dump as root",
            v.start, v.end, v.name
        ))
    }

    /// The memfd behind mapping `v` of `pid` (named `name`): saved with the
    /// first mapping or description of it in the tree (see
    /// [`memfd::MemfdDumper::dump_mapping`]).
    ///
    /// Errors: criu cannot open it (setuid mode with no descriptor of it
    /// in the process), a hugetlb memfd, reads or writes failed.
    pub fn memfd_mapping(
        &mut self,
        pid: i32,
        v: &proc::SmapsVma,
        name: &str,
    ) -> Result<memfd::MemfdMap> {
        let fd = if self.memfds.saved(v.inode) {
            None
        } else {
            Some(
                self.mapped_file(pid, v)?
                    .ok_or_else(|| Self::unopenable(pid, v, "memfd"))?,
            )
        };
        let named = |e: Error| match e {
            Error::Unsupported(m) => Error::Unsupported(format!(
                "pid {pid}: mapping {:#x}-{:#x}: {m}",
                v.start, v.end
            )),
            other => other,
        };
        self.memfds
            .dump_mapping(fd.as_ref().map(|f| f.as_fd()), v.inode, name)
            .map_err(named)
    }

    /// The deleted file behind mapping `v` of `pid` (that had path `path`):
    /// saved once per file for mappings and descriptors, up to
    /// `--ghost-limit`.
    ///
    /// Errors: criu cannot open it (setuid mode with no descriptor of it),
    /// not a regular file, over the limit, reads or writes failed.
    pub fn ghost_mapping(&mut self, pid: i32, v: &proc::SmapsVma, path: &str) -> Result<GhostMap> {
        let dev = libc::makedev(v.dev.0, v.dev.1);
        if let Some(g) = self.ghosts.get(&(dev, v.inode)) {
            return Ok(g.clone());
        }
        let f = self
            .mapped_file(pid, v)?
            .ok_or_else(|| Self::unopenable(pid, v, "deleted file"))?;
        let file = std::fs::File::from(f);
        let md = file.metadata().map_err(|e| Error::file(path, e))?;
        let who = format!("pid {pid}: mapping {:#x}-{:#x}", v.start, v.end);
        if !md.is_file() || md.ino() != v.inode {
            return Err(Error::Unsupported(format!(
                "{who}: {} is not a regular file with the mapping's inode {}",
                v.name, v.inode
            )));
        }
        if let Some(g) = self.ghosts.get(&(md.dev(), md.ino())) {
            return Ok(g.clone());
        }
        let reader = OwnedFd::from(file);
        self.save_ghost(&who, "was deleted while mapped", path, &reader, &md)
    }
}

/// The descriptor being classified.
/// Whether `sock` is a UNIX domain socket (`SO_DOMAIN`, see socket(7)).
fn is_unix(sock: &OwnedFd) -> bool {
    crate::sys::getsockopt_int(sock.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN)
        .is_ok_and(|d| d == libc::AF_UNIX)
}

struct Current<'a> {
    pid: i32,
    fd: i32,
    /// Its `/proc/PID/fd/FD` link.
    link: &'a str,
    info: &'a proc::FdInfo,
    /// The whole `/proc/PID/fdinfo/FD` text (kind-specific lines).
    fdinfo: &'a str,
    /// Open flags without `O_CLOEXEC`.
    flags: u32,
}

/// Paths the watched files of an inotify instance of `pid` may have: the
/// files it has open, its working and root directories and executable.
fn open_paths(pid: i32) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(proc::path(pid, "fd")) {
        for e in rd.flatten() {
            if let Ok(l) = std::fs::read_link(e.path()) {
                out.push(l.to_string_lossy().into_owned());
            }
        }
    }
    for what in ["cwd", "root", "exe"] {
        if let Ok(l) = std::fs::read_link(proc::path(pid, what)) {
            out.push(l.to_string_lossy().into_owned());
        }
    }
    out.retain(|p| p.starts_with('/'));
    out
}

/// Copy `size` bytes of `file` from offset 0 (pread: its offset does not
/// move) into a new file `out`, fsynced.
fn save_ghost(file: &OwnedFd, size: u64, out: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let src = std::fs::File::from(file.try_clone()?);
    let mut dst = std::fs::File::create(out)?;
    let mut buf = vec![0u8; (size.min(1 << 20) as usize).max(1)];
    let mut off = 0u64;
    while off < size {
        let want = ((size - off) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], off)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("file shrank to {off} bytes while saving"),
            ));
        }
        dst.write_all(&buf[..n])?;
        off += n as u64;
    }
    dst.sync_all()
}

/// Collect cwd, root and umask.
///
/// Errors: unreadable /proc links; a cwd or root that was deleted.
pub fn collect_fs(pid: i32, status: &Status) -> Result<FsEntry> {
    let cwd = proc::read_link(&proc::path(pid, "cwd"))?;
    let root = proc::read_link(&proc::path(pid, "root"))?;
    for (what, p) in [("working directory", &cwd), ("root directory", &root)] {
        if let Some(gone) = p.strip_suffix(" (deleted)") {
            return Err(Error::Unsupported(format!(
                "pid {pid}: its {what} {gone} was deleted"
            )));
        }
    }
    Ok(FsEntry {
        cwd,
        root,
        umask: status.umask,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn take_fd_gives_the_same_description() {
        let me = std::process::id() as i32;
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let mut t = FileTable::new(FileOptions::default(), &ImageDir::new("/nonexistent"));
        let copy = t.take_fd(me, f.as_raw_fd()).unwrap();
        assert!(
            crate::sys::same_file_description(me, f.as_raw_fd(), me, copy.as_raw_fd()).unwrap()
        );
        let e = t.take_fd(me, 1 << 19).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {me} fd {}", 1 << 19)), "{e}");
    }
}
