//! The shapes `criu show` prints. They are our own structs, built from the
//! image records, so that the JSON shape (docs/SHOW.md) stays the same when
//! the image records change.

use crate::images::types::{
    CoreEntry, Creds, FdEntry, FileEntry, FileKind, FsEntry, Inventory, MmEntry, PagemapEntry,
    PstreeEntry, UserRegs, Vma, VmaKind,
};
use serde::Serialize;

/// Version of the JSON shape below; bumped on any incompatible change.
pub const SHOW_FORMAT: u32 = 1;

/// `criu show -D DIR`.
#[derive(Serialize, Debug)]
pub struct Checkpoint {
    /// Always [`SHOW_FORMAT`].
    pub show_format: u32,
    /// The images directory as given.
    pub dir: String,
    /// From `inventory.img`.
    pub inventory: InventoryView,
    /// One per live process of `pstree.img`, root first (tree order).
    pub processes: Vec<ProcessView>,
    /// One per zombie of `pstree.img`, in tree order (added within
    /// `show_format` 1; empty when there is none).
    pub zombies: Vec<ZombieView>,
    /// Every PID of `pstree.img`, in its order (for the overview).
    #[serde(skip)]
    pub order: Vec<i32>,
}

/// A zombie: exited, not yet reaped by its parent. It has no images but
/// its `pstree.img` entry.
#[derive(Serialize, Debug)]
pub struct ZombieView {
    /// PID.
    pub pid: i32,
    /// Parent PID.
    pub ppid: i32,
    /// Process group.
    pub pgid: i32,
    /// Session.
    pub sid: i32,
    /// Always `zombie`.
    pub state: &'static str,
    /// Raw wait status as dumped.
    pub status: i32,
    /// Exit code when it exited normally, else null.
    pub exit_code: Option<i32>,
    /// Number of the signal that killed it, else null.
    pub signo: Option<i32>,
    /// Its name (`SIGKILL`), else null.
    pub signal: Option<String>,
    /// Killed by a signal and dumped core.
    pub core_dumped: bool,
}

/// One thread of a live process, from its `core-TID.img`.
#[derive(Serialize, Debug)]
pub struct ThreadView {
    /// Thread ID.
    pub tid: i32,
    /// The thread group leader (its TID is the PID).
    pub leader: bool,
    /// Thread name.
    pub comm: String,
    /// A summary of the registers, hex text.
    pub regs: RegsView,
    /// Blocked signal numbers.
    pub blocked: Vec<u32>,
    /// Signals queued to this thread only (the shared queue is in the
    /// process's `signals.pending`).
    pub pending: Vec<PendingView>,
    /// Alternate signal stack, null when disabled.
    pub altstack: Option<AltStackView>,
    /// rseq registration, null when none.
    pub rseq: Option<RseqView>,
    /// Robust futex list, null when none.
    pub robust_list: Option<RobustListView>,
    /// `clear_child_tid` address (0: none).
    pub clear_child_tid: u64,
    /// Parent-death signal number (0: none).
    pub pdeath_sig: i32,
}

/// Registers most useful to look at, as hex text.
#[derive(Serialize, Debug)]
pub struct RegsView {
    /// Instruction pointer.
    pub rip: String,
    /// Stack pointer.
    pub rsp: String,
    /// Frame pointer.
    pub rbp: String,
    /// Return value / syscall number.
    pub rax: String,
    /// Syscall number at the freeze (`0xffffffffffffffff`: not in one).
    pub orig_rax: String,
    /// Flags.
    pub eflags: String,
    /// TLS base.
    pub fs_base: String,
    /// GS base.
    pub gs_base: String,
}

/// An rseq registration.
#[derive(Serialize, Debug)]
pub struct RseqView {
    /// Address of `struct rseq`.
    pub ptr: u64,
    /// Registered size.
    pub len: u32,
    /// Signature, hex text.
    pub sig: String,
}

/// A robust futex list.
#[derive(Serialize, Debug)]
pub struct RobustListView {
    /// Head address.
    pub head: u64,
    /// Length of the head in bytes.
    pub len: u64,
}

/// The inventory.
#[derive(Serialize, Debug)]
pub struct InventoryView {
    /// Image format version.
    pub format_version: u32,
    /// Version of the criu that dumped.
    pub tool_version: String,
    /// Kernel release at dump.
    pub kernel: String,
    /// `x86_64`.
    pub arch: String,
    /// Root of the tree.
    pub root_pid: i32,
    /// Page size.
    pub page_size: u64,
    /// Seconds since the epoch.
    pub dumped_at: u64,
    /// Dump options that were set (`shell_job`, `leave_running`,
    /// `leave_stopped`).
    pub options: Vec<&'static str>,
}

/// One process.
#[derive(Serialize, Debug)]
pub struct ProcessView {
    /// PID.
    pub pid: i32,
    /// Parent PID.
    pub ppid: i32,
    /// Process group.
    pub pgid: i32,
    /// Session.
    pub sid: i32,
    /// Thread IDs, leader first.
    pub threads: Vec<i32>,
    /// What it shares with its parent (clone(2) flags it is restored
    /// with): `CLONE_FS`, `CLONE_FILES`; empty when nothing.
    pub shares_with_parent: Vec<&'static str>,
    /// Each thread's own state, in the order of `threads` (added within
    /// `show_format` 1).
    pub thread_states: Vec<ThreadView>,
    /// `running` or `stopped`.
    pub state: &'static str,
    /// Command name.
    pub comm: String,
    /// Executable path.
    pub exe: String,
    /// Working directory.
    pub cwd: String,
    /// Root directory.
    pub root: String,
    /// umask, octal text such as `0022`.
    pub umask: String,
    /// Credentials.
    pub creds: CredsView,
    /// Mappings, in address order.
    pub memory: Vec<VmaView>,
    /// Bytes in the pages file.
    pub pages_bytes: u64,
    /// Descriptors, in fd order.
    pub files: Vec<FdView>,
    /// Signals.
    pub signals: SignalsView,
    /// Armed interval timers and every POSIX timer.
    pub timers: TimersView,
    /// With `-c`: the first `--max-bytes` bytes of stored pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contents: Option<Contents>,
}

/// Credentials.
#[derive(Serialize, Debug)]
pub struct CredsView {
    /// Real, effective, saved, filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved, filesystem gid.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capability sets, hex text.
    pub cap_inh: String,
    /// Permitted.
    pub cap_prm: String,
    /// Effective.
    pub cap_eff: String,
    /// Bounding.
    pub cap_bnd: String,
    /// Ambient.
    pub cap_amb: String,
    /// `SECBIT_*`.
    pub securebits: u32,
    /// no_new_privs.
    pub no_new_privs: bool,
}

/// One mapping.
#[derive(Serialize, Debug)]
pub struct VmaView {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// `rwx` plus `p` (private) or `s` (shared), as in /proc/PID/maps.
    pub prot: String,
    /// `anon`, `shared-anon`, `file`, `vdso`, `vvar`, `vvar_vclock`,
    /// `vsyscall`.
    pub backing: &'static str,
    /// The file for `file` mappings, else null.
    pub path: Option<String>,
    /// For `shared-anon`: the shared memory object's id (its shmem inode at
    /// dump; mappings with the same id share their memory), else null.
    pub shmid: Option<u64>,
    /// Offset in the file or shared memory object.
    pub offset: u64,
    /// The /proc/PID/maps name (`[heap]`, `[stack]`, a path, or empty).
    pub name: String,
    /// Bytes of this mapping stored in the pages file.
    pub bytes_stored: u64,
}

/// One descriptor.
#[derive(Serialize, Debug)]
pub struct FdView {
    /// Number.
    pub fd: i32,
    /// The open file description (id in `files.img`); descriptors with the
    /// same id share it (one offset, one set of flags).
    pub file: u32,
    /// `file`, `device` or `inherited`; `missing` when `files.img` has no
    /// such description.
    pub kind: &'static str,
    /// Path, or what an inherited descriptor was (e.g. `pipe:[123]`).
    pub target: String,
    /// Open flags as text (`O_RDONLY|O_APPEND`), empty for inherited ones.
    pub flags: String,
    /// File offset for regular files, else null.
    pub offset: Option<u64>,
    /// Close-on-exec.
    pub cloexec: bool,
}

/// Signals.
#[derive(Serialize, Debug)]
pub struct SignalsView {
    /// Blocked signal numbers.
    pub blocked: Vec<u32>,
    /// Queued signals.
    pub pending: Vec<PendingView>,
    /// Signals whose handler is not `SIG_DFL`.
    pub actions: Vec<ActionView>,
    /// Alternate signal stack, null when disabled.
    pub altstack: Option<AltStackView>,
}

/// A queued signal.
#[derive(Serialize, Debug)]
pub struct PendingView {
    /// Signal number.
    pub signo: i32,
    /// Its name.
    pub name: String,
    /// In the process-wide queue.
    pub shared: bool,
}

/// A non-default signal action.
#[derive(Serialize, Debug)]
pub struct ActionView {
    /// Signal number.
    pub signo: u32,
    /// Its name (`SIGUSR1`, `SIGRTMIN+3`).
    pub name: String,
    /// `SIG_IGN` or the handler address as hex text.
    pub handler: String,
    /// `SA_*` names.
    pub flags: Vec<String>,
    /// Signals blocked during the handler.
    pub mask: Vec<u32>,
}

/// Alternate signal stack.
#[derive(Serialize, Debug)]
pub struct AltStackView {
    /// Base.
    pub sp: u64,
    /// Size in bytes.
    pub size: u64,
    /// `SS_*` flags.
    pub flags: i32,
}

/// Timers.
#[derive(Serialize, Debug)]
pub struct TimersView {
    /// Armed interval timers.
    pub itimers: Vec<ITimerView>,
    /// POSIX timers.
    pub posix: Vec<PosixView>,
}

/// An interval timer.
#[derive(Serialize, Debug)]
pub struct ITimerView {
    /// `real`, `virtual` or `prof`.
    pub which: &'static str,
    /// Interval, µs.
    pub interval_us: u64,
    /// Time to the next expiry, µs.
    pub value_us: u64,
}

/// A POSIX timer.
#[derive(Serialize, Debug)]
pub struct PosixView {
    /// Kernel timer ID.
    pub id: i32,
    /// Clock name (`CLOCK_MONOTONIC`) or number.
    pub clock: String,
    /// `signal`, `none`, `thread` or a number.
    pub notify: String,
    /// Signal name.
    pub signal: String,
    /// Interval, ns.
    pub interval_ns: u64,
    /// Time to the next expiry, ns (0: disarmed).
    pub value_ns: u64,
}

/// Page contents.
#[derive(Serialize, Debug)]
pub struct Contents {
    /// 16-byte lines.
    pub lines: Vec<HexLine>,
    /// More bytes are stored than were shown.
    pub truncated: bool,
}

/// One line of a hex dump.
#[derive(Serialize, Debug, Clone)]
pub struct HexLine {
    /// Virtual address (or file offset when no pagemap is known).
    pub addr: u64,
    /// Bytes in hex, space separated.
    pub hex: String,
    /// Printable characters, `.` for the others.
    pub ascii: String,
}

/// A signal's name: `SIGUSR1`, `SIGRTMIN+2`, or `SIG64`.
pub fn signal_name(sig: i64) -> String {
    const NAMES: [&str; 32] = [
        "0",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match sig {
        1..=31 => NAMES[sig as usize].to_string(),
        32..=64 => format!("SIGRTMIN+{}", sig - 32),
        _ => format!("SIG{sig}"),
    }
}

/// Signal numbers whose bit is set in `mask` (bit `n - 1` is signal `n`).
pub fn mask_signals(mask: u64) -> Vec<u32> {
    (1..=64).filter(|s| mask & (1 << (s - 1)) != 0).collect()
}

fn flag_names(value: u64, table: &[(u64, &str)]) -> (Vec<String>, u64) {
    let mut left = value;
    let mut v = Vec::new();
    for &(bit, name) in table {
        if bit != 0 && value & bit == bit {
            v.push(name.to_string());
            left &= !bit;
        }
    }
    (v, left)
}

/// `SA_*` flag names; unknown bits as one hex number.
pub fn sa_flags(flags: u64) -> Vec<String> {
    let table = [
        (libc::SA_NOCLDSTOP as u64, "SA_NOCLDSTOP"),
        (libc::SA_NOCLDWAIT as u64, "SA_NOCLDWAIT"),
        (libc::SA_SIGINFO as u64, "SA_SIGINFO"),
        (0x0400_0000, "SA_RESTORER"),
        (libc::SA_ONSTACK as u64, "SA_ONSTACK"),
        (libc::SA_RESTART as u64, "SA_RESTART"),
        (libc::SA_NODEFER as u64, "SA_NODEFER"),
        (libc::SA_RESETHAND as u64, "SA_RESETHAND"),
    ];
    let (mut v, left) = flag_names(flags, &table);
    if left != 0 {
        v.push(format!("{left:#x}"));
    }
    v
}

/// Open flags as text, e.g. `O_WRONLY|O_APPEND`.
pub fn open_flags(flags: u32) -> String {
    let acc = match flags as i32 & libc::O_ACCMODE {
        libc::O_RDONLY => "O_RDONLY",
        libc::O_WRONLY => "O_WRONLY",
        _ => "O_RDWR",
    };
    let table = [
        (libc::O_CREAT as u64, "O_CREAT"),
        (libc::O_EXCL as u64, "O_EXCL"),
        (libc::O_NOCTTY as u64, "O_NOCTTY"),
        (libc::O_TRUNC as u64, "O_TRUNC"),
        (libc::O_APPEND as u64, "O_APPEND"),
        (libc::O_NONBLOCK as u64, "O_NONBLOCK"),
        (libc::O_DSYNC as u64, "O_DSYNC"),
        (libc::O_ASYNC as u64, "O_ASYNC"),
        (libc::O_DIRECT as u64, "O_DIRECT"),
        (0o100_000, "O_LARGEFILE"),
        (libc::O_DIRECTORY as u64, "O_DIRECTORY"),
        (libc::O_NOFOLLOW as u64, "O_NOFOLLOW"),
        (libc::O_NOATIME as u64, "O_NOATIME"),
        (libc::O_CLOEXEC as u64, "O_CLOEXEC"),
        (libc::O_SYNC as u64, "O_SYNC"),
        (libc::O_PATH as u64, "O_PATH"),
        (libc::O_TMPFILE as u64, "O_TMPFILE"),
    ];
    let rest = u64::from(flags) & !(libc::O_ACCMODE as u64);
    let (names, left) = flag_names(rest, &table);
    let mut s = acc.to_string();
    for n in names {
        s.push('|');
        s.push_str(&n);
    }
    if left != 0 {
        s.push_str(&format!("|{left:#x}"));
    }
    s
}

fn clock_name(c: i32) -> String {
    match c {
        0 => "CLOCK_REALTIME".into(),
        1 => "CLOCK_MONOTONIC".into(),
        2 => "CLOCK_PROCESS_CPUTIME_ID".into(),
        3 => "CLOCK_THREAD_CPUTIME_ID".into(),
        4 => "CLOCK_MONOTONIC_RAW".into(),
        7 => "CLOCK_BOOTTIME".into(),
        8 => "CLOCK_REALTIME_ALARM".into(),
        9 => "CLOCK_BOOTTIME_ALARM".into(),
        11 => "CLOCK_TAI".into(),
        n => n.to_string(),
    }
}

fn notify_name(n: i32) -> String {
    match n {
        0 => "signal".into(),
        1 => "none".into(),
        4 => "thread".into(),
        n => n.to_string(),
    }
}

/// `rwxp` text of a mapping.
pub fn prot_text(v: &Vma) -> String {
    let p = v.prot as i32;
    let mut s = String::new();
    s.push(if p & libc::PROT_READ != 0 { 'r' } else { '-' });
    s.push(if p & libc::PROT_WRITE != 0 { 'w' } else { '-' });
    s.push(if p & libc::PROT_EXEC != 0 { 'x' } else { '-' });
    s.push(if v.flags as i32 & libc::MAP_SHARED != 0 {
        's'
    } else {
        'p'
    });
    s
}

/// Bytes of `[start, end)` covered by the page runs.
pub fn stored_in(start: u64, end: u64, runs: &[PagemapEntry]) -> u64 {
    runs.iter()
        .map(|r| {
            let rs = r.vaddr;
            let re = r.vaddr.saturating_add(r.nr_pages.saturating_mul(4096));
            re.min(end).saturating_sub(rs.max(start))
        })
        .sum()
}

/// The inventory view.
pub fn inventory(inv: &Inventory) -> InventoryView {
    let mut options = Vec::new();
    if inv.options.shell_job {
        options.push("shell_job");
    }
    if inv.options.leave_running {
        options.push("leave_running");
    }
    if inv.options.leave_stopped {
        options.push("leave_stopped");
    }
    if inv.options.tcp_established {
        options.push("tcp_established");
    }
    if inv.options.network_lock.is_some() {
        options.push("network_locked");
    }
    InventoryView {
        format_version: inv.format_version,
        tool_version: inv.tool_version.clone(),
        kernel: inv.kernel.clone(),
        arch: inv.arch.clone(),
        root_pid: inv.root_pid,
        page_size: inv.page_size,
        dumped_at: inv.dumped_at,
        options,
    }
}

fn creds(c: &Creds) -> CredsView {
    CredsView {
        uids: c.uids,
        gids: c.gids,
        groups: c.groups.clone(),
        cap_inh: format!("{:#x}", c.cap_inh),
        cap_prm: format!("{:#x}", c.cap_prm),
        cap_eff: format!("{:#x}", c.cap_eff),
        cap_bnd: format!("{:#x}", c.cap_bnd),
        cap_amb: format!("{:#x}", c.cap_amb),
        securebits: c.securebits,
        no_new_privs: c.no_new_privs,
    }
}

/// The view of one mapping.
pub fn vma(v: &Vma, runs: &[PagemapEntry]) -> VmaView {
    let shmid = match v.kind {
        VmaKind::SharedAnon { shmid } => Some(shmid),
        _ => None,
    };
    let (backing, path) = match &v.kind {
        VmaKind::Anon => ("anon", None),
        VmaKind::SharedAnon { .. } => ("shared-anon", None),
        VmaKind::File(f) => ("file", Some(f.path.clone())),
        VmaKind::Memfd(m) => {
            let state = match &m.state {
                Some(s) => format!(
                    ", {} bytes in {}, mode {:o}, seals {:#x}",
                    s.size, s.data_file, s.mode, s.seals
                ),
                None => String::new(),
            };
            (
                "memfd",
                Some(format!("memfd:{} (inode {}){state}", m.name, m.ino)),
            )
        }
        VmaKind::Ghost(g) => (
            "ghost",
            Some(format!(
                "{} (deleted, {} bytes saved in ghost-{}.img)",
                g.path, g.size, g.data
            )),
        ),
        VmaKind::Vdso => ("vdso", None),
        VmaKind::Vvar => ("vvar", None),
        VmaKind::VvarVclock => ("vvar_vclock", None),
        VmaKind::Vsyscall => ("vsyscall", None),
    };
    VmaView {
        start: v.start,
        end: v.end,
        prot: prot_text(v),
        backing,
        path,
        shmid,
        offset: v.pgoff,
        name: v.name.clone(),
        bytes_stored: stored_in(v.start, v.end, runs),
    }
}

/// The view of one descriptor; `table` is `files.img`.
pub fn fd(f: &FdEntry, table: &[FileEntry]) -> FdView {
    let (kind, target, flags, offset) = match table.get(f.id as usize).map(|e| &e.kind) {
        Some(k) => describe(k),
        None => ("missing", String::new(), String::new(), None),
    };
    FdView {
        fd: f.fd,
        file: f.id,
        kind,
        target,
        flags,
        offset,
        cloexec: f.cloexec,
    }
}

/// Kind name, target, flags text and offset of an open file description.
pub fn describe(k: &FileKind) -> (&'static str, String, String, Option<u64>) {
    match k {
        FileKind::Reg { file, flags, pos } => {
            ("file", file.path.clone(), open_flags(*flags), Some(*pos))
        }
        FileKind::Device { path, flags } => ("device", path.clone(), open_flags(*flags), None),
        FileKind::Inherited { was } => ("inherited", was.clone(), String::new(), None),
        FileKind::Pidfd(p) => ("pidfd", format!("pid {}", p.pid), open_flags(p.flags), None),
        FileKind::Ghost {
            path,
            size,
            flags,
            pos,
            ..
        } => (
            "ghost",
            format!("{path} (deleted, {size} bytes saved)"),
            open_flags(*flags),
            Some(*pos),
        ),
        FileKind::Unix(u) => {
            let fl = if u.nonblock { "O_NONBLOCK" } else { "" };
            ("unix", u.describe(), fl.to_string(), None)
        }
        FileKind::Pipe(p) => {
            let name = match &p.fifo {
                Some(path) => format!("FIFO {path}"),
                None => format!("pipe:[{}]", p.ino),
            };
            let state = match &p.state {
                Some(s) => format!(", {} of {} bytes queued", s.data.len(), s.size),
                None => String::new(),
            };
            ("pipe", format!("{name}{state}"), open_flags(p.flags), None)
        }
        FileKind::Eventfd(e) => (
            "eventfd",
            format!(
                "count {}{}",
                e.count,
                if e.semaphore { ", EFD_SEMAPHORE" } else { "" }
            ),
            open_flags(e.flags),
            None,
        ),
        FileKind::Signalfd(e) => (
            "signalfd",
            format!(
                "mask {}",
                mask_signals(e.mask)
                    .into_iter()
                    .map(|s| signal_name(i64::from(s)))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            open_flags(e.flags),
            None,
        ),
        FileKind::Timerfd(e) => (
            "timerfd",
            format!(
                "clock {}, {} ns left, interval {} ns, {} unread expirations, settime flags {:#x}{}",
                e.clockid,
                e.remaining_ns,
                e.interval_ns,
                e.ticks,
                e.settime_flags,
                match e.deadline_ns {
                    Some(d) => format!(", deadline {d} ns"),
                    None => String::new(),
                }
            ),
            open_flags(e.flags),
            None,
        ),
        FileKind::Epoll(e) => (
            "epoll",
            e.targets
                .iter()
                .map(|t| format!("fd {} events {:#x} data {:#x}", t.fd, t.events, t.data))
                .collect::<Vec<_>>()
                .join("; "),
            open_flags(e.flags),
            None,
        ),
        FileKind::Inotify(e) => (
            "inotify",
            e.watches
                .iter()
                .map(|w| format!("wd {} {} mask {:#x}", w.wd, w.path, w.mask))
                .collect::<Vec<_>>()
                .join("; "),
            open_flags(e.flags),
            None,
        ),
        FileKind::Fanotify(e) => (
            "fanotify",
            format!(
                "flags {:#x}, event flags {:#x}: {}",
                e.init_flags,
                e.event_flags,
                e.marks
                    .iter()
                    .map(|m| format!(
                        "{:?} mask {:#x} ignored {:#x} mflags {:#x}",
                        m.target, m.mask, m.ignored_mask, m.mflags
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            open_flags(e.flags),
            None,
        ),
        FileKind::Memfd(m) => {
            let state = match &m.state {
                Some(s) => format!(
                    ", {} bytes in {}, mode {:o}, seals {:#x}",
                    s.size, s.data_file, s.mode, s.seals
                ),
                None => String::new(),
            };
            (
                "memfd",
                format!("memfd:{} (inode {}){state}", m.name, m.ino),
                open_flags(m.flags),
                Some(m.pos),
            )
        }
        FileKind::Tty(t) => ("tty", t.describe(), open_flags(t.flags()), None),
        FileKind::Inet(e) => {
            let mut what = e.describe();
            if let crate::fdkind::inet::InetState::Established(c) = &e.state {
                what.push_str(&format!(
                    ", {} bytes unacknowledged, {} bytes unread",
                    c.sndq.len(),
                    c.rcvq.len()
                ));
            }
            let flags = if e.nonblock { "O_NONBLOCK" } else { "" };
            ("inet", what, flags.to_string(), None)
        }
    }
}

/// The signal number of a raw 128-byte `siginfo_t` (its first int).
pub fn siginfo_signo(raw: &[u8]) -> i32 {
    raw.get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

fn pending_view(p: &crate::images::types::PendingSignal) -> PendingView {
    let signo = siginfo_signo(&p.siginfo);
    PendingView {
        signo,
        name: signal_name(i64::from(signo)),
        shared: p.shared,
    }
}

fn altstack(c: &CoreEntry) -> Option<AltStackView> {
    (c.sigaltstack.flags & libc::SS_DISABLE == 0 && c.sigaltstack.size != 0).then_some(
        AltStackView {
            sp: c.sigaltstack.sp,
            size: c.sigaltstack.size,
            flags: c.sigaltstack.flags,
        },
    )
}

fn signals(c: &CoreEntry) -> SignalsView {
    let actions = c
        .sigactions
        .iter()
        .filter(|a| a.handler != 0)
        .map(|a| ActionView {
            signo: a.sig,
            name: signal_name(i64::from(a.sig)),
            handler: if a.handler == 1 {
                "SIG_IGN".into()
            } else {
                format!("{:#x}", a.handler)
            },
            flags: sa_flags(a.flags),
            mask: mask_signals(a.mask),
        })
        .collect();
    SignalsView {
        blocked: mask_signals(c.sigmask),
        pending: c.pending.iter().map(pending_view).collect(),
        actions,
        altstack: altstack(c),
    }
}

fn timers(c: &CoreEntry) -> TimersView {
    let itimers = ["real", "virtual", "prof"]
        .into_iter()
        .zip(c.itimers.iter())
        .filter(|(_, t)| t.value_us != 0 || t.interval_us != 0)
        .map(|(which, t)| ITimerView {
            which,
            interval_us: t.interval_us,
            value_us: t.value_us,
        })
        .collect();
    let posix = c
        .posix_timers
        .iter()
        .map(|t| PosixView {
            id: t.id,
            clock: clock_name(t.clock),
            notify: notify_name(t.notify),
            signal: signal_name(i64::from(t.signo)),
            interval_ns: t.interval_ns,
            value_ns: t.value_ns,
        })
        .collect();
    TimersView { itimers, posix }
}

fn regs(r: &UserRegs) -> RegsView {
    let h = |x: u64| format!("{x:#x}");
    RegsView {
        rip: h(r.rip),
        rsp: h(r.rsp),
        rbp: h(r.rbp),
        rax: h(r.rax),
        orig_rax: h(r.orig_rax),
        eflags: h(r.eflags),
        fs_base: h(r.fs_base),
        gs_base: h(r.gs_base),
    }
}

/// The view of one thread of process `pid`.
pub fn thread(pid: i32, c: &CoreEntry) -> ThreadView {
    ThreadView {
        tid: c.tid,
        leader: c.tid == pid,
        comm: c.comm.clone(),
        regs: regs(&c.regs),
        blocked: mask_signals(c.sigmask),
        pending: c
            .pending
            .iter()
            .filter(|p| !p.shared)
            .map(pending_view)
            .collect(),
        altstack: altstack(c),
        rseq: c.rseq.map(|r| RseqView {
            ptr: r.ptr,
            len: r.len,
            sig: format!("{:#x}", r.sig),
        }),
        robust_list: (c.robust_list.0 != 0).then_some(RobustListView {
            head: c.robust_list.0,
            len: c.robust_list.1,
        }),
        clear_child_tid: c.clear_child_tid,
        pdeath_sig: c.pdeath_sig,
    }
}

/// Decode a raw wait status: (exit code, signal, core dumped).
pub fn wait_status(status: i32) -> (Option<i32>, Option<i32>, bool) {
    if status & 0x7f == 0 {
        (Some((status >> 8) & 0xff), None, false)
    } else {
        (None, Some(status & 0x7f), status & 0x80 != 0)
    }
}

/// The view of a zombie, from its `pstree.img` entry and wait status.
pub fn zombie(t: &PstreeEntry, status: i32) -> ZombieView {
    let (exit_code, signo, core_dumped) = wait_status(status);
    ZombieView {
        pid: t.pid,
        ppid: t.ppid,
        pgid: t.pgid,
        sid: t.sid,
        state: "zombie",
        status,
        exit_code,
        signo,
        signal: signo.map(|s| signal_name(i64::from(s))),
        core_dumped,
    }
}

/// Everything read for one process.
pub struct ProcessImages {
    /// `pstree.img` entry.
    pub tree: PstreeEntry,
    /// `core-PID.img` (the leader's).
    pub core: CoreEntry,
    /// `core-TID.img` of every thread in `tree.threads`, in that order
    /// (the leader's included).
    pub thread_cores: Vec<CoreEntry>,
    /// `mm-PID.img`.
    pub mm: MmEntry,
    /// `fs-PID.img`.
    pub fs: FsEntry,
    /// `files-PID.img`.
    pub files: Vec<FdEntry>,
    /// Total bytes the pagemap says the pages file holds.
    pub pages_bytes: u64,
    /// Page runs.
    pub runs: Vec<PagemapEntry>,
}

/// The view of one process.
/// `table` is `files.img`.
pub fn process(p: &ProcessImages, table: &[FileEntry]) -> ProcessView {
    ProcessView {
        pid: p.tree.pid,
        ppid: p.tree.ppid,
        pgid: p.tree.pgid,
        sid: p.tree.sid,
        threads: p.tree.threads.clone(),
        shares_with_parent: [
            ("CLONE_FS", p.tree.shares_fs),
            ("CLONE_FILES", p.tree.shares_files),
        ]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect(),
        thread_states: p
            .thread_cores
            .iter()
            .map(|c| thread(p.tree.pid, c))
            .collect(),
        state: if p.core.stopped { "stopped" } else { "running" },
        comm: p.core.comm.clone(),
        exe: p.mm.exe.clone(),
        cwd: p.fs.cwd.clone(),
        root: p.fs.root.clone(),
        umask: format!("{:04o}", p.fs.umask),
        creds: creds(&p.core.creds),
        memory: p.mm.vmas.iter().map(|v| vma(v, &p.runs)).collect(),
        pages_bytes: p.pages_bytes,
        files: p.files.iter().map(|f| fd(f, table)).collect(),
        signals: signals(&p.core),
        timers: timers(&p.core),
        contents: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(signal_name(10), "SIGUSR1");
        assert_eq!(signal_name(34), "SIGRTMIN+2");
        assert_eq!(mask_signals(0b101), vec![1, 3]);
        assert_eq!(mask_signals(1 << 63), vec![64]);
        assert_eq!(
            open_flags((libc::O_WRONLY | libc::O_APPEND) as u32),
            "O_WRONLY|O_APPEND"
        );
        assert_eq!(open_flags(0), "O_RDONLY");
        assert_eq!(
            sa_flags((libc::SA_RESTART as u64) | 0x0400_0000),
            vec!["SA_RESTORER", "SA_RESTART"]
        );
    }

    #[test]
    fn wait_statuses() {
        assert_eq!(wait_status(7 << 8), (Some(7), None, false));
        assert_eq!(wait_status(0), (Some(0), None, false));
        assert_eq!(wait_status(9), (None, Some(9), false));
        assert_eq!(wait_status(0x80 | 11), (None, Some(11), true));
        let t = PstreeEntry {
            pid: 5,
            ppid: 4,
            pgid: 4,
            sid: 4,
            threads: Vec::new(),
            zombie: Some(15),
            shares_fs: false,
            shares_files: false,
        };
        let z = zombie(&t, 15);
        assert_eq!(z.signal.as_deref(), Some("SIGTERM"));
        assert_eq!(z.exit_code, None);
        assert_eq!(z.state, "zombie");
    }

    #[test]
    fn stored_bytes() {
        let runs = [
            PagemapEntry {
                vaddr: 0x1000,
                nr_pages: 2,
                file: 0,
                offset: 0,
            },
            PagemapEntry {
                vaddr: 0x5000,
                nr_pages: 1,
                file: 1,
                offset: 0,
            },
        ];
        assert_eq!(stored_in(0x0, 0x2000, &runs), 0x1000);
        assert_eq!(stored_in(0x0, 0x10000, &runs), 0x3000);
        assert_eq!(stored_in(0x6000, 0x7000, &runs), 0);
    }
}
