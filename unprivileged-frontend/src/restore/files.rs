//! Descriptors and filesystem context of a restored task. Every open file
//! description of the checkpoint (`files.img`) is made once, in criu itself,
//! and passed to each task that has it over a datagram socket inherited by
//! every stub (`SCM_RIGHTS`, see unix(7)); the task receives a batch with an
//! injected recvmsg(2) and moves each descriptor to its number. Processes
//! that shared a description at dump share it again.

use super::ghost;
use super::mm::close_in;
use super::validate::Checkpoint;
use crate::error::{Error, Result};
use crate::helper::Helper;
use crate::images::types::{
    FdEntry, FileEntry, FileId, FileKind, FileOwner, FsEntry, LockClass, MmEntry, VmaKind,
};
use crate::images::ImageDir;
use crate::info;
use crate::remote::{Batch, Remote};
use nix::sys::socket::{self, ControlMessage, MsgFlags};
use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// `__O_TMPFILE`: the bit of `O_TMPFILE` besides `O_DIRECTORY`.
const O_TMPFILE_BIT: i32 = 0o20000000;

/// Open flags never replayed when reopening a file (`O_TMPFILE` would make
/// a new file).
const DROP_FLAGS: i32 =
    libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC | O_TMPFILE_BIT;

/// Most descriptors one `SCM_RIGHTS` message carries (`SCM_MAX_FD`, see
/// unix(7)).
pub const BATCH: usize = 253;

/// Where the received batch's `struct msghdr`, iovec, byte and control
/// buffer go in the task's scratch area (offsets in bytes).
const MSG_OFF: u64 = 256;
const IOV_OFF: u64 = MSG_OFF + 64;
const BYTE_OFF: u64 = IOV_OFF + 16;
const CTL_OFF: u64 = 512;
/// Bytes of scratch area the receiving uses: up to the end of a full
/// batch's control buffer (`CMSG_SPACE(BATCH * 4)`).
const SCRATCH_NEEDED: u64 = CTL_OFF + ((16 + BATCH * 4).div_ceil(8) * 8) as u64;

/// The flags a file is reopened with: an `O_TMPFILE` file is a regular
/// file, opened without `O_TMPFILE` and so without `O_DIRECTORY`.
pub fn reopen_flags(dumped: u32) -> i32 {
    let f = dumped as i32;
    if f & O_TMPFILE_BIT != 0 {
        f & !DROP_FLAGS & !libc::O_DIRECTORY
    } else {
        f & !DROP_FLAGS
    }
}

/// The descriptor number every stub has its end of the transport socket
/// at: above every descriptor of every process of the checkpoint (and at
/// least 3). Restore's own temporaries in a task go above it.
pub fn transport_fd(ck: &Checkpoint) -> i32 {
    ck.procs
        .iter()
        .flat_map(|p| p.files.iter())
        .map(|f| f.fd + 1)
        .max()
        .unwrap_or(0)
        .max(3)
}

/// Check that every file the restore reopens is still there and, for
/// regular files, still has the dumped size.
///
/// Errors: [`Error::Refused`] naming the path and what changed.
pub fn check_files_exist(mm: &MmEntry, files: &[FdEntry], table: &[FileEntry]) -> Result<()> {
    let mut ids: Vec<&FileId> = Vec::new();
    for v in &mm.vmas {
        if let VmaKind::File(f) = &v.kind {
            ids.push(f);
        }
    }
    for f in files {
        match table.get(f.id as usize).map(|e| &e.kind) {
            Some(FileKind::Reg { file, .. }) => ids.push(file),
            Some(FileKind::Device { path, .. }) => {
                stat(path)?;
            }
            _ => {}
        }
    }
    for id in ids {
        let md = stat(&id.path)?;
        if md.is_file() && md.len() != id.size {
            return Err(Error::Refused(format!(
                "{} changed size since dump (was {} bytes, now {})",
                id.path,
                id.size,
                md.len()
            )));
        }
    }
    // A deleted executable is made again from its mapping's saved file.
    if mm.deleted_exe().is_none() {
        stat(&mm.exe)?;
    }
    Ok(())
}

fn stat(path: &str) -> Result<std::fs::Metadata> {
    std::fs::metadata(path).map_err(|e| match e.raw_os_error() {
        Some(n) => Error::Refused(format!("{path}: {}", nix::errno::Errno::from_raw(n).desc())),
        None => Error::file(path, e),
    })
}

/// Makes the open file descriptions of a checkpoint in criu and sends them
/// to the tasks. A description is made when the first process that has it
/// is restored and closed in criu after the last one.
pub struct FileSender<'a> {
    table: &'a [FileEntry],
    /// Descriptions made so far, by id.
    made: HashMap<u32, OwnedFd>,
    /// For each id, the index (in `Checkpoint::procs`) of the last process
    /// that has it.
    last_user: Vec<usize>,
    /// criu's end of the transport socket.
    local: OwnedFd,
    /// The number of the tasks' end in every task.
    pub transport: i32,
    /// The process being restored is in a session whose controlling
    /// terminal is a pty of the tree: its `/dev/tty` descriptors are opened
    /// by the task (set before each process's descriptors).
    pub dev_tty_in_task: bool,
    /// `/dev/null`, sent in place of those until the task opens them.
    placeholder: Option<OwnedFd>,
    /// The images directory (ghost file contents).
    dir: ImageDir,
    /// Deleted files made again, by their `data` number: a descriptor of
    /// the new (already unlinked) file that each description reopens.
    ghosts: HashMap<u32, OwnedFd>,
    /// Owners naming a task not created yet when the description was made
    /// (a thread): set by [`FileSender::finish`].
    pending_owners: Vec<(OwnedFd, FileOwner, i32, i32)>,
    /// Makes the UNIX sockets (see [`crate::fdkind::unix::Restorer`]).
    unix: crate::fdkind::unix::Restorer,
    /// State shared by the descriptions of one pipe or memfd.
    kinds: KindRestorers,
    /// Epoll descriptions whose registrations are made already.
    epolls_done: std::collections::HashSet<u32>,
    /// Terminals made so far.
    ttys: crate::fdkind::tty::Restorer,
    /// How network sockets are restored.
    pub inet: crate::fdkind::inet::RestoreOpts,
}

/// Objects behind several open file descriptions (a pipe's buffer, a
/// memfd's file), made with the first description and kept until the
/// restore ends.
struct KindRestorers {
    pipes: crate::fdkind::pipe::PipeRestorer,
    memfds: crate::fdkind::memfd::MemfdRestorer,
}

impl<'a> FileSender<'a> {
    /// A sender for `ck`, and the end of the transport socket that the root
    /// stub gets at [`transport_fd`] (every other stub inherits it).
    ///
    /// Errors: socketpair(2) failed.
    pub fn new(ck: &'a Checkpoint) -> Result<(Self, OwnedFd)> {
        let (local, remote) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::Datagram,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::Unsupported(format!("socketpair for passing descriptors: {e}")))?;
        let mut last_user = vec![0; ck.files.len()];
        for (i, p) in ck.procs.iter().enumerate() {
            for f in &p.files {
                if let Some(l) = last_user.get_mut(f.id as usize) {
                    *l = i;
                }
            }
        }
        // Descriptions in flight in a socket's queue are sent again by
        // [`FileSender::finish`], after every process.
        for e in &ck.files {
            if let FileKind::Unix(u) = &e.kind {
                for id in u.queue.iter().flat_map(|m| &m.fds) {
                    if let Some(l) = last_user.get_mut(*id as usize) {
                        *l = usize::MAX;
                    }
                }
            }
        }
        let unix =
            crate::fdkind::unix::Restorer::new(ck.files.iter().filter_map(|e| match &e.kind {
                FileKind::Unix(u) => Some(u),
                _ => None,
            }));
        let mut memfds = crate::fdkind::memfd::MemfdRestorer::new(&ck.root().dir);
        for e in &ck.files {
            if let FileKind::Memfd(m) = &e.kind {
                memfds.know(m.ino, &m.state);
            }
        }
        for v in ck.procs.iter().flat_map(|p| &p.mm.vmas) {
            if let VmaKind::Memfd(m) = &v.kind {
                memfds.know(m.ino, &m.state);
            }
        }
        raise_nofile_limit();
        Ok((
            FileSender {
                table: &ck.files,
                made: HashMap::new(),
                last_user,
                local,
                transport: transport_fd(ck),
                dev_tty_in_task: false,
                placeholder: None,
                dir: ImageDir::new(&ck.root().dir),
                ghosts: HashMap::new(),
                pending_owners: Vec::new(),
                unix,
                kinds: KindRestorers {
                    pipes: crate::fdkind::pipe::PipeRestorer::new(),
                    memfds,
                },
                epolls_done: std::collections::HashSet::new(),
                ttys: Default::default(),
                inet: Default::default(),
            },
            remote,
        ))
    }

    /// criu's descriptor of `f`'s description (made now if it is not yet),
    /// valid until [`FileSender::done_with`].
    fn get(&mut self, pid: i32, f: &FdEntry) -> Result<RawFd> {
        if self.dev_tty_in_task && is_dev_tty(&self.table[f.id as usize].kind) {
            // Opened by the task itself once its session has its terminal
            // ([`reopen_dev_tty`]); this only holds the number.
            if self.placeholder.is_none() {
                self.placeholder = Some(open("/dev/null", libc::O_RDONLY, pid, f.fd)?);
            }
            return Ok(self
                .placeholder
                .as_ref()
                .map(|p| p.as_raw_fd())
                .unwrap_or(-1));
        }
        if let FileKind::Inherited { was } = &self.table[f.id as usize].kind {
            if !(0..=2).contains(&f.fd) {
                return Err(Error::Unsupported(format!(
                    "pid {pid} fd {}: only 0, 1 and 2 can be inherited",
                    f.fd
                )));
            }
            if nix::fcntl::fcntl(f.fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
                return Err(Error::Refused(format!(
                    "pid {pid} fd {} was {was}, given by whoever started it; it becomes criu's own fd {}, which is closed: start criu restore with fd {} open",
                    f.fd, f.fd, f.fd
                )));
            }
            return Ok(f.fd);
        }
        if !self.made.contains_key(&f.id) {
            let e = &self.table[f.id as usize];
            let fd = match &e.kind {
                FileKind::Ghost { .. } => self.make_ghost(e, pid, f.fd)?,
                FileKind::Unix(u) => self.unix.open(u).map_err(|er| in_pid(pid, f.fd, er))?,
                FileKind::Tty(t) => self.ttys.open(self.table, t, pid, f.fd)?,
                _ => make(e, pid, f.fd, &mut self.kinds, &self.inet)?,
            };
            self.describe_more(e, &fd, pid, f.fd)?;
            self.made.insert(f.id, fd);
        }
        Ok(self.made[&f.id].as_raw_fd())
    }

    /// After every process has its descriptors, before any runs: make the
    /// UNIX sockets only in flight, refill every socket's queue (with the
    /// descriptions in flight), connect, shut down and set options (see
    /// [`crate::fdkind::unix::Restorer::finish`]).
    ///
    /// Errors: making a description or refilling a queue failed.
    pub fn finish_sockets(&mut self) -> Result<()> {
        let table = self.table;
        let mut unix = std::mem::replace(
            &mut self.unix,
            crate::fdkind::unix::Restorer::new(std::iter::empty()),
        );
        for e in table {
            if let FileKind::Unix(u) = &e.kind {
                if !self.made.contains_key(&e.id) && unix.needs_open(u.ino) {
                    self.made.insert(e.id, unix.open(u)?);
                }
            }
        }
        let made = &mut self.made;
        let kinds = &mut self.kinds;
        let inet = &self.inet;
        unix.finish(&mut |id| {
            let e = table.get(id as usize).ok_or_else(|| {
                Error::Refused(format!("a socket queue refers to file {id}, which files.img does not have"))
            })?;
            let fd = match made.entry(id) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    if matches!(
                        e.kind,
                        FileKind::Inherited { .. }
                            | FileKind::Unix(_)
                            | FileKind::Ghost { .. }
                            | FileKind::Tty(_)
                    ) {
                        return Err(Error::Refused(format!(
                            "file {id} in flight in a socket queue cannot be made here: it is marked inherited, a deleted file, a terminal, or a socket closed already"
                        )));
                    }
                    v.insert(make(e, 0, -1, kinds, inet)?)
                }
            };
            fd.try_clone()
                .map_err(|er| Error::Refused(format!("dup of file {id}: {er}")))
        })
    }

    /// Send `batch` (at most [`BATCH`]) over the transport, in order.
    fn send(&mut self, pid: i32, batch: &[FdEntry]) -> Result<()> {
        let mut raw = Vec::with_capacity(batch.len());
        for f in batch {
            raw.push(self.get(pid, f)?);
        }
        let iov = [IoSlice::new(&[0u8])];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        socket::sendmsg::<()>(self.local.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .map_err(|e| {
                Error::Unsupported(format!("pid {pid}: passing descriptors to the task: {e}"))
            })?;
        Ok(())
    }

    /// Owner and the locks that belong to the description itself (flock,
    /// OFD, lease), set in criu on `fd`, the description just made.
    fn describe_more(&mut self, e: &FileEntry, fd: &OwnedFd, pid: i32, n: i32) -> Result<()> {
        if let Some(o) = &e.owner {
            match crate::sys::set_file_owner(fd, o.kind, o.pid, o.signal) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {
                    let copy = fd.try_clone().map_err(|err| Error::file("dup", err))?;
                    self.pending_owners.push((copy, o.clone(), pid, n));
                }
                Err(err) => return Err(owner_error(pid, n, o, &err)),
            }
        }
        for l in &e.locks {
            let what = match l.class {
                LockClass::Posix { .. } => continue,
                LockClass::Flock => ("flock", crate::sys::flock_nb(fd, l.write)),
                LockClass::Ofd => (
                    "OFD lock",
                    crate::sys::ofd_lock(fd, l.write, l.start, l.end),
                ),
                LockClass::Lease => ("lease", crate::sys::set_lease(fd, l.write)),
            };
            if let (name, Err(err)) = what {
                return Err(Error::Refused(format!(
                    "pid {pid} fd {n}: cannot take its {} {name} again: {err} (another process holds a conflicting one?)",
                    if l.write { "write" } else { "read" }
                )));
            }
        }
        Ok(())
    }

    /// criu's description of the file behind mapping `v` (a memfd or a
    /// deleted file, [`VmaKind::Memfd`], [`VmaKind::Ghost`]) of `pid`, to
    /// be passed to the task and mapped: the same file as every other
    /// mapping and description of it, made now if it is not yet. Read-write
    /// for a shared writable mapping, else read-only.
    ///
    /// Errors: making the file failed; `v` is of another kind.
    pub fn mapping_file(&mut self, pid: i32, v: &crate::images::types::Vma) -> Result<OwnedFd> {
        let write = v.flags & libc::MAP_SHARED as u32 != 0 && v.prot & libc::PROT_WRITE as u32 != 0;
        let mode = if write { libc::O_RDWR } else { libc::O_RDONLY };
        let what = format!("pid {pid}: mapping {:#x}-{:#x}", v.start, v.end);
        match &v.kind {
            VmaKind::Memfd(m) => self
                .kinds
                .memfds
                .for_mapping(m, write)
                .map_err(|e| match e {
                    Error::Image(i) => Error::Image(i),
                    other => Error::Refused(format!("{what}: {other}")),
                }),
            VmaKind::Ghost(g) => {
                self.ghost_keeper(g, libc::O_RDWR).map_err(|err| {
                    Error::Refused(format!(
                        "{what}: cannot make the deleted file {} again: {err}",
                        g.path
                    ))
                })?;
                let keeper = self.ghosts[&g.data].as_raw_fd();
                crate::fdkind::open_path(&format!("/proc/self/fd/{keeper}"), mode).map_err(|err| {
                    Error::Refused(format!(
                        "{what}: cannot open the deleted file {} made again: {err}",
                        g.path
                    ))
                })
            }
            _ => Err(Error::Unsupported(format!(
                "{what} ({}) is not a memfd or deleted file mapping",
                v.name
            ))),
        }
    }

    /// A read-only description of the deleted executable `v` (a
    /// [`VmaKind::Ghost`] mapping) of `pid`, to give `PR_SET_MM_MAP`:
    /// criu's own read-write description of the file made again is
    /// replaced by a read-only one first, since the kernel refuses an
    /// executable open for writing (`ETXTBSY`, see prctl(2)).
    ///
    /// Errors: making or reopening the file failed.
    pub fn exe_file(&mut self, pid: i32, v: &crate::images::types::Vma) -> Result<OwnedFd> {
        let f = self.mapping_file(pid, v)?;
        if let VmaKind::Ghost(g) = &v.kind {
            self.ghosts.insert(
                g.data,
                f.try_clone().map_err(|err| Error::file("dup", err))?,
            );
        }
        Ok(f)
    }

    /// Pass criu's descriptor `fd` to task `r` over the transport; returns
    /// its number in the task (the lowest free one: the caller moves or
    /// closes it).
    ///
    /// Errors: sending or the injected recvmsg failed.
    pub fn pass(&mut self, h: &mut Helper, r: &Remote, fd: &OwnedFd) -> Result<i32> {
        let iov = [IoSlice::new(&[0u8])];
        let raw = [fd.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        socket::sendmsg::<()>(self.local.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .map_err(|e| {
                Error::Unsupported(format!(
                    "pid {}: passing a descriptor to the task: {e}",
                    r.pid
                ))
            })?;
        let got = receive(h, r, self.transport, 1, false)?;
        Ok(got[0])
    }

    /// Make deleted file `g` again unless it is made already (once per
    /// file: every description and mapping of it uses the same new inode);
    /// `flags`: the first description's open flags. Returns whether its
    /// keeper is that description itself (an `O_TMPFILE` file made with
    /// these flags, see [`ghost::create`]).
    fn ghost_keeper(
        &mut self,
        g: &crate::images::types::GhostMap,
        flags: i32,
    ) -> std::io::Result<bool> {
        if self.ghosts.contains_key(&g.data) {
            return Ok(false);
        }
        let src = self.dir.ghost(g.data);
        let (keeper, exact) = ghost::create(
            &g.path, &src, g.size, g.mode, g.uid, g.gid, g.mtime_ns, flags,
        )?;
        self.ghosts.insert(g.data, keeper);
        Ok(exact)
    }

    /// Make a deleted file again (once per file: every description of it
    /// reopens the same new inode) and open one description of it.
    fn make_ghost(&mut self, e: &FileEntry, pid: i32, fd: i32) -> Result<OwnedFd> {
        let FileKind::Ghost {
            path,
            data,
            size,
            mode,
            uid,
            gid,
            mtime_ns,
            flags,
            pos,
        } = &e.kind
        else {
            unreachable!("make_ghost on a ghost entry only")
        };
        let g = crate::images::types::GhostMap {
            path: path.clone(),
            data: *data,
            size: *size,
            mode: *mode,
            uid: *uid,
            gid: *gid,
            mtime_ns: *mtime_ns,
        };
        let exact = self.ghost_keeper(&g, *flags as i32).map_err(|err| {
            Error::Refused(format!(
                "pid {pid} fd {fd}: cannot make the deleted file {path} again: {err}"
            ))
        })?;
        if exact {
            // Made with this description's own flags (O_TMPFILE).
            let f = self.ghosts[data]
                .try_clone()
                .map_err(|err| Error::file("dup", err))?;
            // Writing the contents moved the offset: set it even to 0.
            seek(&f, *pos, path, pid, fd)?;
            return Ok(f);
        }
        let keeper = self.ghosts[data].as_raw_fd();
        let f = open(
            &format!("/proc/self/fd/{keeper}"),
            reopen_flags(*flags),
            pid,
            fd,
        )?;
        if *pos != 0 {
            seek(&f, *pos, path, pid, fd)?;
        }
        Ok(f)
    }

    /// Set the owners that named a task not there yet when their
    /// description was made; call once every task exists.
    ///
    /// Errors: [`Error::Refused`] when the owner still does not exist.
    /// Then what is left to do on terminals (locking pty pairs again) and
    /// a shell job's terminal foreground group (`root`: the pstree root).
    pub fn finish(&mut self, root: &crate::images::types::PstreeEntry) -> Result<()> {
        self.kinds.memfds.finish()?;
        self.ttys.finish()?;
        crate::fdkind::tty::shell_foreground(self.table, root);
        for (fd, o, pid, n) in self.pending_owners.drain(..) {
            crate::sys::set_file_owner(&fd, o.kind, o.pid, o.signal)
                .map_err(|err| owner_error(pid, n, &o, &err))?;
        }
        Ok(())
    }

    /// The checkpoint's open file descriptions (`files.img`).
    pub fn table(&self) -> &'a [FileEntry] {
        self.table
    }

    /// Close criu's copies of the descriptions no process after `index`
    /// (in `Checkpoint::procs`) has.
    pub fn done_with(&mut self, index: usize) {
        let last = &self.last_user;
        self.made.retain(|id, _| last[*id as usize] > index);
    }
}

/// Name the first user of a description in an error.
fn in_pid(pid: i32, fd: i32, e: Error) -> Error {
    Error::Refused(format!("pid {pid} fd {fd}: {e}"))
}

/// Raise criu's soft limit on open descriptors to its hard limit: criu
/// holds each description from its first to its last user.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Make the open file description of `e` in criu (close-on-exec there).
/// `pid` and `fd` name its first user, for errors.
///
/// Errors: [`Error::Refused`] when the file cannot be opened (in setuid
/// mode with the caller's rights, never the helper's).
fn make(
    e: &FileEntry,
    pid: i32,
    fd: i32,
    kinds: &mut KindRestorers,
    inet: &crate::fdkind::inet::RestoreOpts,
) -> Result<OwnedFd> {
    use crate::fdkind::{epoll, event, inotify};
    let named = |err: Error| match err {
        Error::Refused(m) => Error::Refused(format!("pid {pid} fd {fd}: {m}")),
        Error::Unsupported(m) => Error::Unsupported(format!("pid {pid} fd {fd}: {m}")),
        Error::Image(i) => Error::Image(i),
        other => Error::Refused(format!("pid {pid} fd {fd}: {other}")),
    };
    match &e.kind {
        FileKind::Pipe(p) => kinds.pipes.open(p).map_err(named),
        FileKind::Inet(s) => crate::fdkind::inet::restore(s, inet).map_err(named),
        FileKind::Eventfd(x) => event::restore_eventfd(x).map_err(named),
        FileKind::Signalfd(x) => event::restore_signalfd(x).map_err(named),
        FileKind::Timerfd(x) => event::restore_timerfd(x).map_err(named),
        FileKind::Epoll(x) => epoll::restore(x).map_err(named),
        FileKind::Inotify(x) => inotify::restore(x).map_err(named),
        FileKind::Memfd(x) => kinds.memfds.open(x).map_err(named),
        FileKind::Fanotify(x) => crate::fdkind::fanotify::restore(x).map_err(named),
        FileKind::Reg { file, flags, pos } => {
            let fl = reopen_flags(*flags);
            let f = open(&file.path, fl, pid, fd)?;
            if fl & libc::O_PATH == 0 && *pos != 0 {
                seek(&f, *pos, &file.path, pid, fd)?;
            }
            Ok(f)
        }
        FileKind::Device { path, flags } => open(path, reopen_flags(*flags), pid, fd),
        FileKind::Pidfd(p) => crate::fdkind::pidfd::restore(p, pid, fd),
        // Made by FileSender::get for a process's descriptor; in flight
        // only (a crafted image: dump refuses these), nothing can make them.
        FileKind::Inherited { .. }
        | FileKind::Ghost { .. }
        | FileKind::Unix(_)
        | FileKind::Tty(_) => Err(Error::Refused(format!(
            "file {} ({}) cannot be made: the images say it is only in flight in a socket queue, which dump never writes; the images were changed or damaged, dump again",
            e.id,
            crate::show::view::describe(&e.kind).0
        ))),
    }
}

/// Set the offset of a description just made to `pos` bytes.
///
/// Errors: [`Error::Refused`] naming pid, fd and path.
fn seek(f: &OwnedFd, pos: u64, path: &str, pid: i32, fd: i32) -> Result<()> {
    nix::unistd::lseek(f.as_raw_fd(), pos as i64, nix::unistd::Whence::SeekSet).map_err(|err| {
        Error::Refused(format!(
            "pid {pid} fd {fd}: cannot seek {path} to {pos}: {}",
            err.desc()
        ))
    })?;
    Ok(())
}

fn owner_error(pid: i32, fd: i32, o: &FileOwner, err: &std::io::Error) -> Error {
    Error::Refused(format!(
        "pid {pid} fd {fd}: cannot make {} {} its owner again (F_SETOWN_EX): {err}",
        match o.kind {
            0 => "thread",
            2 => "process group",
            _ => "process",
        },
        o.pid
    ))
}

fn open(path: &str, flags: i32, pid: i32, fd: i32) -> Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let mode = flags & libc::O_ACCMODE;
    std::fs::OpenOptions::new()
        .read(mode == libc::O_RDONLY || mode == libc::O_RDWR)
        .write(mode == libc::O_WRONLY || mode == libc::O_RDWR)
        .custom_flags(flags & !libc::O_ACCMODE)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|err| {
            let why = match err.raw_os_error() {
                Some(n) => nix::errno::Errno::from_raw(n).to_string(),
                None => err.to_string(),
            };
            Error::Refused(format!("pid {pid} fd {fd}: cannot open {path}: {why}"))
        })
}

/// Put every descriptor of `files-PID.img` at its number, batch by batch in
/// fd order, then close the task's end of the transport.
///
/// The task holds only descriptors already placed (all below the batch)
/// and the transport (above all), so the kernel gives the i-th received
/// descriptor a number no higher than its target; placing from the last to
/// the first then never overwrites one still waiting.
///
/// Errors: making a description failed, or an injected call failed.
pub fn restore_fds(
    h: &mut Helper,
    r: &Remote,
    sender: &mut FileSender<'_>,
    files: &[FdEntry],
) -> Result<()> {
    let t = sender.transport;
    for batch in files.chunks(BATCH) {
        sender.send(r.pid, batch)?;
        // Received descriptors are close-on-exec when most of the batch
        // wants it; only the others need a call to change their flag.
        let cloexec = batch.iter().filter(|f| f.cloexec).count() * 2 > batch.len();
        let received = receive(h, r, t, batch.len(), cloexec)?;
        // Placed before the next recvmsg, which takes the lowest free
        // numbers.
        let mut b = Batch::new(r);
        for (f, &got) in batch.iter().zip(&received).rev() {
            if got != f.fd {
                let fl = if f.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
                b.call(
                    format!("dup3({got}, {})", f.fd),
                    libc::SYS_dup3,
                    [got as u64, f.fd as u64, fl, 0, 0, 0],
                );
                b.call(
                    format!("close({got})"),
                    libc::SYS_close,
                    [got as u64, 0, 0, 0, 0, 0],
                );
            } else if f.cloexec != cloexec {
                let fl = if f.cloexec { libc::FD_CLOEXEC } else { 0 };
                b.call(
                    format!("fcntl({got}, F_SETFD, {fl})"),
                    libc::SYS_fcntl,
                    [got as u64, libc::F_SETFD as u64, fl as u64, 0, 0, 0],
                );
            }
        }
        b.run(h)?;
    }
    close_in(h, r, t)?;
    restore_posix_locks(h, r, sender.table, files)?;
    // Epoll registrations name the task's descriptor numbers: made once
    // all are in place, by the first task that has the instance.
    for f in files {
        if let FileKind::Epoll(e) = &sender.table[f.id as usize].kind {
            if sender.epolls_done.insert(f.id) {
                crate::fdkind::epoll::after_install(h, r, f.fd, e)?;
            }
        }
    }
    info!("pid {}: {} descriptors restored", r.pid, files.len());
    Ok(())
}

/// Receive `n` descriptors sent over the transport (the task's end at
/// `t`) with an injected recvmsg(2), close-on-exec if `cloexec`
/// (`MSG_CMSG_CLOEXEC`); returns their numbers in the task.
///
/// Errors: the scratch area is too small, the call failed, or the task
/// did not get exactly `n` descriptors.
fn receive(h: &mut Helper, r: &Remote, t: i32, n: usize, cloexec: bool) -> Result<Vec<i32>> {
    if r.scratch_len < SCRATCH_NEEDED {
        return Err(Error::Unsupported(format!(
            "pid {}: scratch area of {} bytes, receiving descriptors needs {SCRATCH_NEEDED}",
            r.pid, r.scratch_len
        )));
    }
    let (msg, iov, byte, ctl) = (
        r.scratch + MSG_OFF,
        r.scratch + IOV_OFF,
        r.scratch + BYTE_OFF,
        r.scratch + CTL_OFF,
    );
    let ctl_len = (16 + n * 4).div_ceil(8) * 8;
    // struct msghdr: name, namelen, iov, iovlen, control, controllen,
    // flags (see recvmsg(2)).
    // struct msghdr (7 words, padded to IOV_OFF), then struct iovec.
    let mut hdr = Vec::with_capacity((BYTE_OFF - MSG_OFF) as usize);
    for w in [0u64, 0, iov, 1, ctl, ctl_len as u64, 0, 0, byte, 1] {
        hdr.extend_from_slice(&w.to_le_bytes());
    }
    r.put(h, MSG_OFF, &hdr)?;
    let rflags = if cloexec { libc::MSG_CMSG_CLOEXEC } else { 0 };
    let got = r.call(
        h,
        &format!("recvmsg({t})"),
        libc::SYS_recvmsg,
        [t as u64, msg, rflags as u64, 0, 0, 0],
    )?;
    // msg_flags and the control message, in one read.
    let flags_off = MSG_OFF + 48;
    let span = r.get(h, flags_off, (CTL_OFF - flags_off) as usize + ctl_len)?;
    let (flags, back) = span.split_at((CTL_OFF - flags_off) as usize);
    // The kernel reports MSG_CMSG_CLOEXEC back in msg_flags; anything else
    // (MSG_CTRUNC) means descriptors were lost.
    let flags = u32::from_le_bytes(flags[..4].try_into().unwrap());
    parse_rights(back, n)
        .filter(|_| got == 1 && flags & !(libc::MSG_CMSG_CLOEXEC as u32) == 0)
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "pid {}: the task did not receive the {n} descriptors sent to it",
                r.pid
            ))
        })
}

/// POSIX record locks are the process's own: it takes each again, through
/// one of its descriptors of the file, by an injected `fcntl(F_SETLK)`.
///
/// Errors: the lock is held by someone else now, or the call failed.
fn restore_posix_locks(
    h: &mut Helper,
    r: &Remote,
    table: &[FileEntry],
    files: &[FdEntry],
) -> Result<()> {
    let mut done: Vec<u32> = Vec::new();
    for f in files {
        if done.contains(&f.id) {
            continue;
        }
        done.push(f.id);
        for l in &table[f.id as usize].locks {
            if l.class != (LockClass::Posix { pid: r.pid }) {
                continue;
            }
            let arg = r.put(h, 0, &crate::sys::encode_flock(l.write, l.start, l.end))?;
            r.call(
                h,
                &format!("fcntl({}, F_SETLK, {}-{:?})", f.fd, l.start, l.end),
                libc::SYS_fcntl,
                [f.fd as u64, libc::F_SETLK as u64, arg, 0, 0, 0],
            )?;
        }
    }
    Ok(())
}

/// The descriptor numbers of a received `SCM_RIGHTS` control message
/// (`struct cmsghdr`: len u64, level i32, type i32, then the ints), if it
/// holds exactly `n`.
pub fn parse_rights(ctl: &[u8], n: usize) -> Option<Vec<i32>> {
    let len = u64::from_le_bytes(ctl.get(..8)?.try_into().ok()?) as usize;
    let level = i32::from_le_bytes(ctl.get(8..12)?.try_into().ok()?);
    let ty = i32::from_le_bytes(ctl.get(12..16)?.try_into().ok()?);
    if level != libc::SOL_SOCKET || ty != libc::SCM_RIGHTS || len != 16 + n * 4 {
        return None;
    }
    ctl.get(16..16 + n * 4)?
        .chunks_exact(4)
        .map(|c| Some(i32::from_le_bytes(c.try_into().ok()?)))
        .collect()
}

/// Working directory, root and umask. The dumped cwd is a path as seen from
/// criu's root (`/proc/PID/cwd`), so it is entered before chroot, which
/// leaves the working directory as it is.
///
/// Errors: an injected call failed (naming the directory).
pub fn restore_fs(h: &mut Helper, r: &Remote, fs: &FsEntry) -> Result<()> {
    let mut b = Batch::new(r);
    let p = b.put(0, &cstr(&fs.cwd))?;
    b.call(
        format!("chdir({})", fs.cwd),
        libc::SYS_chdir,
        [p, 0, 0, 0, 0, 0],
    );
    if fs.root != "/" {
        let p = b.put(0, &cstr(&fs.root))?;
        b.call(
            format!("chroot({})", fs.root),
            libc::SYS_chroot,
            [p, 0, 0, 0, 0, 0],
        );
    }
    b.call("umask", libc::SYS_umask, [fs.umask as u64, 0, 0, 0, 0, 0]);
    b.run(h)?;
    info!(
        "pid {}: cwd {}, root {}, umask {:03o}",
        r.pid, fs.cwd, fs.root, fs.umask
    );
    Ok(())
}

/// `s` with its terminating NUL.
fn cstr(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    b
}

fn is_dev_tty(k: &FileKind) -> bool {
    matches!(k, FileKind::Device { path, .. } if path == "/dev/tty")
}

/// In a process whose session's controlling terminal is a pty of the tree
/// (set by then): open each of its `/dev/tty` descriptors in the task, so
/// it names that terminal and not criu's, and put it at its number.
///
/// Errors: an injected call failed (`ENXIO`: the session has no
/// controlling terminal after all).
pub fn reopen_dev_tty(
    h: &mut Helper,
    r: &Remote,
    table: &[FileEntry],
    files: &[FdEntry],
) -> Result<()> {
    for f in files {
        let Some(FileKind::Device { path, flags }) = table.get(f.id as usize).map(|e| &e.kind)
        else {
            continue;
        };
        if path != "/dev/tty" {
            continue;
        }
        let p = r.put_cstr(h, 0, path)?;
        let fl = reopen_flags(*flags) | libc::O_CLOEXEC;
        let tmp = r.call(
            h,
            "openat(/dev/tty)",
            libc::SYS_openat,
            [libc::AT_FDCWD as i64 as u64, p, fl as u64, 0, 0, 0],
        )? as i32;
        let cl = if f.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
        r.call(
            h,
            &format!("dup3({tmp}, {})", f.fd),
            libc::SYS_dup3,
            [tmp as u64, f.fd as u64, cl, 0, 0, 0],
        )?;
        close_in(h, r, tmp)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let f = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u32;
        assert_eq!(reopen_flags(f), libc::O_WRONLY | libc::O_APPEND);
    }

    #[test]
    fn rights_parsed() {
        let mut c = Vec::new();
        c.extend_from_slice(&24u64.to_le_bytes());
        c.extend_from_slice(&libc::SOL_SOCKET.to_le_bytes());
        c.extend_from_slice(&libc::SCM_RIGHTS.to_le_bytes());
        c.extend_from_slice(&7i32.to_le_bytes());
        c.extend_from_slice(&9i32.to_le_bytes());
        assert_eq!(parse_rights(&c, 2), Some(vec![7, 9]));
        assert_eq!(parse_rights(&c, 1), None);
        assert_eq!(parse_rights(&c[..20], 2), None);
        c[12] = 2;
        assert_eq!(parse_rights(&c, 2), None);
    }

    #[test]
    fn missing_file_named() {
        let mut mm = super::super::validate::tests::sample_mm();
        mm.exe = "/nonexistent/criu-test-exe".into();
        mm.vmas.clear();
        let e = check_files_exist(&mm, &[], &[]).unwrap_err().to_string();
        assert_eq!(e, "/nonexistent/criu-test-exe: No such file or directory");
    }
}
