//! The records stored in image files. Field units are given in each doc
//! comment; addresses are virtual addresses in the dumped task; "pages" are
//! 4096-byte pages. See docs/IMAGES.md for which file holds which record.

use serde::{Deserialize, Serialize};
pub use shared_ipc::UserRegs;

/// `inventory.img`: one record describing the whole checkpoint.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// Version of the image format ([`super::format::FORMAT_VERSION`]).
    pub format_version: u32,
    /// Version of the tool that wrote the images (Cargo package version).
    pub tool_version: String,
    /// `uname -r` of the dumping kernel.
    pub kernel: String,
    /// Always `x86_64`.
    pub arch: String,
    /// PID of the root of the dumped tree.
    pub root_pid: i32,
    /// Page size in bytes when dumped (4096).
    pub page_size: u64,
    /// Seconds since the epoch when the dump finished.
    pub dumped_at: u64,
    /// Options the dump was made with.
    pub options: DumpOptions,
}

/// Options recorded in the inventory.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct DumpOptions {
    /// `--shell-job`: the task was attached to the caller's terminal.
    pub shell_job: bool,
    /// `--leave-running`.
    pub leave_running: bool,
    /// `--leave-stopped`.
    pub leave_stopped: bool,
    /// `--tcp-established`: established TCP connections were saved.
    pub tcp_established: bool,
    /// The network lock the dump left in place for the restore to remove:
    /// the name of an nftables table in the `inet` family (see
    /// `netlock.rs`); `None` when nothing is locked.
    pub network_lock: Option<String>,
}

/// `pstree.img`: one record per process of the tree, root first.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PstreeEntry {
    /// Process ID (thread group ID).
    pub pid: i32,
    /// Parent PID at dump time.
    pub ppid: i32,
    /// Process group ID.
    pub pgid: i32,
    /// Session ID.
    pub sid: i32,
    /// Thread IDs, the leader first; `core-TID.img` holds each one's state.
    pub threads: Vec<i32>,
    /// A zombie (exited, not yet reaped by its parent): its raw wait status
    /// (`exit_code` of /proc/PID/stat: code << 8, or the signal). A zombie
    /// has no other image; restore re-creates it and lets it exit so.
    pub zombie: Option<i32>,
    /// It shares its filesystem information (root, cwd, umask) with its
    /// parent: made with clone(2) `CLONE_FS`, found with kcmp(2) `KCMP_FS`.
    /// Restore creates it with `CLONE_FS` again.
    pub shares_fs: bool,
    /// It shares its descriptor table with its parent: made with clone(2)
    /// `CLONE_FILES`, found with kcmp(2) `KCMP_FILES`. Restore creates it
    /// with `CLONE_FILES` again and restores the table once, in the parent.
    pub shares_files: bool,
}

/// `core-TID.img`: per-task state, one file per thread. Process-wide
/// fields (signal actions, timers, limits, shared pending signals,
/// `stopped`, `child_subreaper`) are only filled in the leader's.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CoreEntry {
    /// Thread ID.
    pub tid: i32,
    /// Task name (`/proc/PID/comm`, at most 15 bytes).
    pub comm: String,
    /// General registers at the moment of the freeze (see ptrace(2),
    /// `PTRACE_GETREGS`); fs_base/gs_base are the TLS bases.
    pub regs: UserRegs,
    /// XSAVE area (`PTRACE_GETREGSET`, `NT_X86_XSTATE`), bytes as the kernel
    /// gave them.
    pub xstate: Vec<u8>,
    /// Blocked signals; bit `n - 1` is signal `n`.
    pub sigmask: u64,
    /// Queued signals, private queue then shared queue.
    pub pending: Vec<PendingSignal>,
    /// Actions of signals 1..=64 except SIGKILL and SIGSTOP.
    pub sigactions: Vec<SigAction>,
    /// `ITIMER_REAL`, `ITIMER_VIRTUAL`, `ITIMER_PROF` (see getitimer(2)).
    pub itimers: [ITimer; 3],
    /// POSIX timers (see timer_create(2)).
    pub posix_timers: Vec<PosixTimer>,
    /// Resource limits (see getrlimit(2)), indexed by resource number.
    pub rlimits: Vec<Rlimit>,
    /// Execution domain (see personality(2)).
    pub personality: u32,
    /// rseq registration, if any (see rseq(2)).
    pub rseq: Option<Rseq>,
    /// Alternate signal stack (see sigaltstack(2)).
    pub sigaltstack: SigAltStack,
    /// Robust futex list head address and length in bytes (see
    /// get_robust_list(2)); 0 when none.
    pub robust_list: (u64, u64),
    /// `clear_child_tid` address (see set_tid_address(2),
    /// `PR_GET_TID_ADDRESS`).
    pub clear_child_tid: u64,
    /// Parent-death signal (see prctl(2), `PR_GET_PDEATHSIG`).
    pub pdeath_sig: i32,
    /// Whether the task was stopped (SIGSTOP) when dumped.
    pub stopped: bool,
    /// Credentials.
    pub creds: Creds,
    /// The process is a child subreaper (`PR_GET_CHILD_SUBREAPER`).
    pub child_subreaper: bool,
}

/// One queued signal.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PendingSignal {
    /// In the process-wide queue rather than the thread's own.
    pub shared: bool,
    /// Raw `siginfo_t`, 128 bytes.
    pub siginfo: Vec<u8>,
}

/// A signal action (kernel `struct sigaction` for rt_sigaction(2)).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigAction {
    /// Signal number.
    pub sig: u32,
    /// Handler address, or 0 (SIG_DFL) / 1 (SIG_IGN).
    pub handler: u64,
    /// `SA_*` flags.
    pub flags: u64,
    /// `sa_restorer` address.
    pub restorer: u64,
    /// Signals blocked during the handler.
    pub mask: u64,
}

/// An interval timer (see getitimer(2)); times in microseconds.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ITimer {
    /// Reload value, µs.
    pub interval_us: u64,
    /// Time to the next expiry, µs; 0 means disarmed.
    pub value_us: u64,
}

/// A POSIX timer (see timer_create(2), `/proc/PID/timers` in proc(5)).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PosixTimer {
    /// Kernel timer ID.
    pub id: i32,
    /// Clock ID.
    pub clock: i32,
    /// `sigev_notify` (SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID).
    pub notify: i32,
    /// Thread ID for SIGEV_THREAD_ID, else 0.
    pub notify_tid: i32,
    /// Signal number.
    pub signo: i32,
    /// `sigev_value` as stored.
    pub sigval: u64,
    /// Interval, ns.
    pub interval_ns: u64,
    /// Time to next expiry, ns; 0 means disarmed.
    pub value_ns: u64,
}

/// A resource limit; `u64::MAX` is RLIM_INFINITY.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// Resource number (RLIMIT_*).
    pub resource: u32,
    /// Soft limit.
    pub cur: u64,
    /// Hard limit.
    pub max: u64,
}

/// The rseq registration (see rseq(2)).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rseq {
    /// Address of `struct rseq`.
    pub ptr: u64,
    /// Registered size in bytes.
    pub len: u32,
    /// Signature.
    pub sig: u32,
}

/// Alternate signal stack (see sigaltstack(2)).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SigAltStack {
    /// Base address.
    pub sp: u64,
    /// `SS_*` flags (SS_DISABLE when none).
    pub flags: i32,
    /// Size in bytes.
    pub size: u64,
}

/// Credentials (see credentials(7), capabilities(7)).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Creds {
    /// Real, effective, saved, filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved, filesystem gid.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capability sets as bit masks.
    pub cap_inh: u64,
    /// Permitted set.
    pub cap_prm: u64,
    /// Effective set.
    pub cap_eff: u64,
    /// Bounding set.
    pub cap_bnd: u64,
    /// Ambient set.
    pub cap_amb: u64,
    /// `SECBIT_*` flags (see prctl(2), `PR_GET_SECUREBITS`).
    pub securebits: u32,
    /// `PR_SET_NO_NEW_PRIVS` was set.
    pub no_new_privs: bool,
}

/// `mm-PID.img`: the address space.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MmEntry {
    /// Fields of `struct prctl_mm_map` (see prctl(2), `PR_SET_MM`), taken
    /// from `/proc/PID/stat` (see proc(5)).
    pub start_code: u64,
    /// End of code.
    pub end_code: u64,
    /// Start of data.
    pub start_data: u64,
    /// End of data.
    pub end_data: u64,
    /// Start of the heap.
    pub start_brk: u64,
    /// Current program break.
    pub brk: u64,
    /// Start of the stack.
    pub start_stack: u64,
    /// Start of the argument strings.
    pub arg_start: u64,
    /// End of the argument strings.
    pub arg_end: u64,
    /// Start of the environment.
    pub env_start: u64,
    /// End of the environment.
    pub env_end: u64,
    /// Auxiliary vector as (type, value) words, ending with AT_NULL.
    pub auxv: Vec<u64>,
    /// Path of the executable (`/proc/PID/exe`).
    pub exe: String,
    /// Every mapping, in address order.
    pub vmas: Vec<Vma>,
}

impl MmEntry {
    /// The mapping of the deleted executable, when [`MmEntry::exe`] names
    /// one (`PATH (deleted)`, see proc(5) `/proc/PID/exe`): a
    /// [`VmaKind::Ghost`] of that path.
    pub fn deleted_exe(&self) -> Option<&Vma> {
        let path = self.exe.strip_suffix(" (deleted)")?;
        self.vmas
            .iter()
            .find(|v| matches!(&v.kind, VmaKind::Ghost(g) if g.path == path))
    }

    /// The eleven address fields of `struct prctl_mm_map`, in its order
    /// (code, data, brk, stack, args, env; see prctl(2), `PR_SET_MM_MAP`).
    pub fn prctl_fields(&self) -> [u64; 11] {
        [
            self.start_code,
            self.end_code,
            self.start_data,
            self.end_data,
            self.start_brk,
            self.brk,
            self.start_stack,
            self.arg_start,
            self.arg_end,
            self.env_start,
            self.env_end,
        ]
    }
}

/// What backs a mapping.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum VmaKind {
    /// Private anonymous memory (including `[heap]` and `[stack]`).
    Anon,
    /// Shared anonymous memory (`MAP_SHARED|MAP_ANONYMOUS`, shown as
    /// `/dev/zero (deleted)` in proc(5) maps): a shmem object that several
    /// mappings, in one process or in several (inherited across fork(2)),
    /// may share. [`Vma::pgoff`] is the mapping's offset in the object.
    SharedAnon {
        /// Identity of the object at dump time: the inode number of its
        /// shmem file (the inode column of `/proc/PID/maps`). Mappings with
        /// the same `shmid` are the same memory and are restored so; the
        /// object's pages are stored once, in the pages file of the first
        /// process (in pstree order) that maps each part of it.
        shmid: u64,
    },
    /// A file mapping.
    File(FileId),
    /// A mapping of a memfd (`/memfd:NAME (deleted)` in proc(5) maps, see
    /// memfd_create(2)), shared or private. Restore maps the memfd made
    /// for the checkpoint's inode [`crate::fdkind::memfd::MemfdMap::ino`]:
    /// the same file as every descriptor and every other mapping of it in
    /// the tree. [`Vma::pgoff`] is the offset in the file; a shared
    /// mapping's contents are the memfd's (`memfd-INO.img`), a private
    /// one's written pages are stored as for [`VmaKind::File`].
    Memfd(crate::fdkind::memfd::MemfdMap),
    /// A mapping of a regular file that was deleted (`PATH (deleted)` in
    /// maps): its contents are saved as for a deleted open file
    /// (`ghost-DATA.img`, up to `--ghost-limit`), restore makes the file
    /// again, unlinked, once for every mapping and descriptor of it, and
    /// maps it. Private written pages are stored as for [`VmaKind::File`].
    Ghost(GhostMap),
    /// `[vdso]`.
    Vdso,
    /// `[vvar]`.
    Vvar,
    /// `[vvar_vclock]` (Linux 6.13+).
    VvarVclock,
    /// `[vsyscall]`: fixed by the kernel, never restored.
    Vsyscall,
}

/// A deleted file behind a mapping ([`VmaKind::Ghost`]).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GhostMap {
    /// The path it had, without " (deleted)".
    pub path: String,
    /// Number of its contents file `ghost-DATA.img`, shared with the
    /// descriptors ([`FileKind::Ghost`]) and other mappings of the file.
    pub data: u32,
    /// Size in bytes.
    pub size: u64,
    /// File mode bits (`st_mode & 07777`).
    pub mode: u32,
    /// Owner user ID.
    pub uid: u32,
    /// Owner group ID.
    pub gid: u32,
    /// Last modification, ns since the epoch.
    pub mtime_ns: i64,
}

/// Identity of a file at dump time, to notice changes before restoring.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileId {
    /// Absolute path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Device number (`st_dev`).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
}

/// One mapping (see proc(5), `/proc/PID/smaps`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `PROT_*` bits.
    pub prot: u32,
    /// `MAP_*` bits: `MAP_SHARED` or `MAP_PRIVATE`, plus `MAP_GROWSDOWN` and
    /// `MAP_ANONYMOUS` where they apply.
    pub flags: u32,
    /// Offset in bytes into the file for file mappings, into the shmem
    /// object for [`VmaKind::SharedAnon`]; 0 for the others.
    pub pgoff: u64,
    /// Backing.
    pub kind: VmaKind,
    /// `madvise(2)` advice to re-apply (MADV_DONTDUMP, MADV_DONTFORK,
    /// MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_MERGEABLE, MADV_WIPEONFORK,
    /// MADV_RANDOM, MADV_SEQUENTIAL).
    pub madvise: Vec<i32>,
    /// The mapping was mlock'ed (`lo` in VmFlags).
    pub locked: bool,
    /// The name shown in /proc/PID/maps (path, `[heap]`, `[stack]`, ...).
    pub name: String,
}

/// `pagemap-PID.img`: which memory the pages files hold. The first record
/// is a [`PagemapHead`], then one [`PagemapEntry`] per run, in address
/// order. Each run names its pages file and its offset there; in each file
/// the runs' bytes follow each other in entry order with no gaps (since
/// format version 5: a dump of more than 2 MiB stripes its pages, 1 MiB at a
/// time, over two files so two threads can write them at once).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PagemapHead {
    /// The pages files, e.g. `pages-123.img` then `pages-123.1.img`; a
    /// run's [`PagemapEntry::file`] indexes this list.
    pub files: Vec<PagesFile>,
}

/// One pages file of a process.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PagesFile {
    /// File name in the image directory, e.g. `pages-123.img`.
    pub name: String,
    /// Its size in bytes: the sum of its runs' lengths.
    pub bytes: u64,
}

/// One run of stored pages.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapEntry {
    /// Start address, page aligned.
    pub vaddr: u64,
    /// Number of 4096-byte pages.
    pub nr_pages: u64,
    /// Which pages file holds it: an index into [`PagemapHead::files`].
    pub file: u32,
    /// Byte offset of its first page in that file.
    pub offset: u64,
}

/// A pagemap image record: the head or a run.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum PagemapRecord {
    /// The first record.
    Head(PagemapHead),
    /// A run.
    Run(PagemapEntry),
}

/// `fs-PID.img`: filesystem context.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FsEntry {
    /// Working directory.
    pub cwd: String,
    /// Root directory.
    pub root: String,
    /// File mode creation mask (see umask(2)).
    pub umask: u32,
}

/// `files-PID.img`: one record per open descriptor, in fd order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FdEntry {
    /// Descriptor number.
    pub fd: i32,
    /// `FD_CLOEXEC` was set.
    pub cloexec: bool,
    /// The open file description: [`FileEntry::id`] in `files.img`.
    pub id: u32,
}

/// `files.img`: one record per open file description of the whole tree.
/// Descriptors of one or several processes that refer to the same
/// description (dup(2), fork(2), `SCM_RIGHTS`) share one entry, so they
/// share it again after restore (one offset, one set of flags).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FileEntry {
    /// Number of the description, unique in the checkpoint (0, 1, 2, ...).
    pub id: u32,
    /// What it is.
    pub kind: FileKind,
    /// Who gets `SIGIO`/`SIGURG` for it and with which signal (see
    /// fcntl(2), `F_SETOWN_EX`, `F_SETSIG`); `None` when neither was set.
    pub owner: Option<FileOwner>,
    /// Locks held through it (`--file-locks`).
    pub locks: Vec<FileLock>,
}

/// The owner of an open file description (fcntl(2), `F_GETOWN_EX`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileOwner {
    /// `F_OWNER_TID` (0), `F_OWNER_PID` (1) or `F_OWNER_PGRP` (2).
    pub kind: i32,
    /// The thread, process or process group ID (0: none).
    pub pid: i32,
    /// `F_GETSIG`: the signal sent instead of `SIGIO` (0: `SIGIO`).
    pub signal: i32,
}

/// A file lock (see fcntl(2) "Advisory record locking" and "Open file
/// description locks", flock(2), and "Leases").
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileLock {
    /// What kind of lock.
    pub class: LockClass,
    /// A write (exclusive) lock, else a read (shared) one.
    pub write: bool,
    /// First byte locked (0 for flock and leases).
    pub start: u64,
    /// Last byte locked, `None` for "to the end of the file, however
    /// long".
    pub end: Option<u64>,
}

/// Kinds of [`FileLock`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum LockClass {
    /// A POSIX record lock (`F_SETLK`), owned by process `pid`, which
    /// takes it again at restore through this description.
    Posix {
        /// The owning process.
        pid: i32,
    },
    /// A flock(2) lock, owned by the description.
    Flock,
    /// An open file description lock (`F_OFD_SETLK`).
    Ofd,
    /// A lease (`F_SETLEASE`).
    Lease,
}

/// What an open file description refers to.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum FileKind {
    /// A regular file or directory, reopened by path.
    Reg {
        /// The file.
        file: FileId,
        /// Open flags (`O_ACCMODE`, `O_APPEND`, `O_NONBLOCK`, ... without
        /// `O_CLOEXEC`, see open(2)).
        flags: u32,
        /// File offset in bytes.
        pos: u64,
    },
    /// A regular file that was unlinked while open ("ghost" file), or an
    /// `O_TMPFILE` file never linked: its contents are in
    /// `ghost-DATA.img` (raw bytes, `size` long). Restore creates it again
    /// (at `path` when the name is free, else beside it), unlinks it, and
    /// opens each description through it.
    Ghost {
        /// The path it had, without " (deleted)" (for `O_TMPFILE`:
        /// `DIR/#INODE`).
        path: String,
        /// Number of its contents file `ghost-DATA.img` (unique per deleted
        /// file in the checkpoint), shared by every description and
        /// mapping ([`VmaKind::Ghost`]) of it.
        data: u32,
        /// Size in bytes.
        size: u64,
        /// File mode bits (`st_mode & 07777`).
        mode: u32,
        /// Owner user ID.
        uid: u32,
        /// Owner group ID.
        gid: u32,
        /// Last modification, ns since the epoch.
        mtime_ns: i64,
        /// Open flags, as for [`FileKind::Reg`].
        flags: u32,
        /// File offset in bytes.
        pos: u64,
    },
    /// A pidfd (see pidfd_open(2)).
    Pidfd(crate::fdkind::pidfd::PidfdEntry),
    /// A character device reopened by path (`/dev/null`, `/dev/zero`, ...).
    Device {
        /// Device path.
        path: String,
        /// Open flags.
        flags: u32,
    },
    /// A standard descriptor (0, 1 or 2) on a terminal, pipe or socket
    /// whose other end is outside the tree: at restore, descriptor N of a
    /// process becomes the restoring criu's descriptor N.
    Inherited {
        /// What it was (for `show` and logs), e.g. `pipe:[1234]`.
        was: String,
    },
    /// A UNIX domain socket (see unix(7)), with its queued data.
    Unix(crate::fdkind::unix::UnixEntry),
    /// A pipe or FIFO (see [`crate::fdkind::pipe`]).
    Pipe(crate::fdkind::pipe::PipeEntry),
    /// An eventfd (see [`crate::fdkind::event`]).
    Eventfd(crate::fdkind::event::EventfdEntry),
    /// A signalfd (see [`crate::fdkind::event`]).
    Signalfd(crate::fdkind::event::SignalfdEntry),
    /// A timerfd (see [`crate::fdkind::event`]).
    Timerfd(crate::fdkind::event::TimerfdEntry),
    /// An epoll instance (see [`crate::fdkind::epoll`]).
    Epoll(crate::fdkind::epoll::EpollEntry),
    /// An inotify instance (see [`crate::fdkind::inotify`]).
    Inotify(crate::fdkind::inotify::InotifyEntry),
    /// A memfd (see [`crate::fdkind::memfd`]).
    Memfd(crate::fdkind::memfd::MemfdEntry),
    /// A terminal: a pseudo-terminal master or slave of a pair inside the
    /// tree, or the caller's terminal of a shell job (see
    /// [`crate::fdkind::tty`]).
    Tty(crate::fdkind::tty::TtyEntry),
    /// A fanotify group (see [`crate::fdkind::fanotify`]).
    Fanotify(crate::fdkind::fanotify::FanotifyEntry),
    /// A TCP or UDP socket over IPv4 or IPv6 (see `fdkind/inet.rs`).
    Inet(crate::fdkind::inet::InetEntry),
}
