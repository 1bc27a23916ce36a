//! The frontend's few system calls that need `unsafe`, each wrapped so the
//! rest of the crate stays safe.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Arrange for `fd` to be open at number `target` (without close-on-exec)
/// in the child `cmd` starts; `fd` is closed in this process when `cmd` is
/// dropped.
pub fn pass_fd_as(cmd: &mut Command, fd: OwnedFd, target: i32) {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only
    // calls the async-signal-safe dup2(2) and fcntl(2). `fd` is moved into
    // the closure so it stays open until the command is spawned.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &fd;
            if raw == target {
                if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `prlimit(2)` read of another process's limit: (soft, hard).
///
/// Errors: the errno of prlimit.
pub fn get_rlimit(pid: i32, resource: u32) -> std::io::Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a NULL new limit only reads; `old` is a valid out-pointer.
    let r = unsafe {
        libc::prlimit64(
            pid,
            resource as libc::__rlimit_resource_t,
            std::ptr::null(),
            &mut old,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((old.rlim_cur, old.rlim_max))
}

/// `get_robust_list(2)` of another task: (head address, length in bytes).
///
/// Errors: the errno of the call.
pub fn get_robust_list(tid: i32) -> std::io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: both out-pointers are valid for writes of their sizes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((head, len as u64))
}

/// `kcmp(2)` with `KCMP_FILE` as an ordering of fd `a` of process `pa`
/// against fd `b` of process `pb` (the kernel's order of open file
/// descriptions, the same for every pair of processes); `None` when the
/// kernel gives no order or the call fails.
pub fn kcmp_file_order(pa: i32, a: i32, pb: i32, b: i32) -> Option<std::cmp::Ordering> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes only integers.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pa, pb, KCMP_FILE, a, b) };
    match r {
        0 => Some(std::cmp::Ordering::Equal),
        1 => Some(std::cmp::Ordering::Less),
        2 => Some(std::cmp::Ordering::Greater),
        _ => None,
    }
}

/// A per-process kernel resource that kcmp(2) compares (its `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KcmpResource {
    /// The descriptor table (`KCMP_FILES`, shared with `CLONE_FILES`).
    Files = 2,
    /// Filesystem information: root, cwd, umask (`KCMP_FS`, shared with
    /// `CLONE_FS`).
    Fs = 3,
}

/// `kcmp(2)` of `what` of processes `a` and `b`: `Equal` when they share
/// it, else the kernel's order of the two objects.
///
/// Errors: the errno of kcmp (EPERM without ptrace read access to both).
pub fn kcmp_order(a: i32, b: i32, what: KcmpResource) -> std::io::Result<std::cmp::Ordering> {
    // SAFETY: kcmp takes only integers.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, a, b, what as libc::c_long, 0, 0) };
    match r {
        0 => Ok(std::cmp::Ordering::Equal),
        1 => Ok(std::cmp::Ordering::Less),
        2 => Ok(std::cmp::Ordering::Greater),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// `kcmp(2)` with `KCMP_FILE`: whether fd `a` of process `pa` and fd `b` of
/// process `pb` are the same open file description.
///
/// Errors: the errno of kcmp.
pub fn same_file_description(pa: i32, a: i32, pb: i32, b: i32) -> std::io::Result<bool> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes only integers.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pa, pb, KCMP_FILE, a, b) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r == 0)
}

/// Map one private anonymous read-only page and read it, so that it is
/// backed by the kernel's shared zero page; returns its address.
pub fn map_zero_page() -> Option<u64> {
    // SAFETY: a new anonymous mapping chosen by the kernel; nothing else
    // refers to that range.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: `p` is a readable page we just mapped.
    let _ = unsafe { std::ptr::read_volatile(p as *const u8) };
    Some(p as u64)
}

/// Unmap a page from [`map_zero_page`].
pub fn unmap_zero_page(addr: u64) {
    // SAFETY: `addr` came from `map_zero_page` and is not used afterwards.
    unsafe {
        libc::munmap(addr as *mut libc::c_void, 4096);
    }
}

// ---------------------------------------------------------------------------
// Kernel feature probes for `criu check` (see check.rs).

/// Turn a raw `-1`-on-error return into an `io::Result`.
fn cvt(r: libc::c_long) -> std::io::Result<libc::c_long> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Take ownership of a descriptor a system call just returned.
fn owned(fd: libc::c_long) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just returned by the kernel as a new descriptor that
    // nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

// ---------------------------------------------------------------------------
// Terminals (see fdkind/tty.rs).

/// The kernel's `struct termios` as the `TCGETS` and `TCSETS` ioctls pass
/// it (see ioctl_tty(2); not glibc's larger one): flags, line discipline
/// and the 19 control characters (`NCCS` of the kernel).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelTermios {
    /// `c_iflag`.
    pub iflag: u32,
    /// `c_oflag`.
    pub oflag: u32,
    /// `c_cflag`.
    pub cflag: u32,
    /// `c_lflag`.
    pub lflag: u32,
    /// `c_line`.
    pub line: u8,
    /// `c_cc`.
    pub cc: [u8; 19],
}

/// `TCGETS` (or, `locked`, `TIOCGLCKTRMIOS`) on a terminal (see
/// ioctl_tty(2)); on a pseudo-terminal master it reads the pair's (the
/// slave's) settings.
///
/// Errors: its errno (ENOTTY: not a terminal).
pub fn tty_get_termios(fd: &impl AsRawFd, locked: bool) -> std::io::Result<KernelTermios> {
    let mut t = KernelTermios::default();
    let req = if locked {
        libc::TIOCGLCKTRMIOS
    } else {
        libc::TCGETS
    };
    // SAFETY: the kernel writes one `struct termios` (36 bytes, the
    // layout of KernelTermios) to `t`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut t as *mut KernelTermios) } as libc::c_long)?;
    Ok(t)
}

/// `TCSETS` (or, `locked`, `TIOCSLCKTRMIOS`, which needs
/// `CAP_SYS_ADMIN`): set the settings at once, neither draining nor
/// flushing (see ioctl_tty(2)).
///
/// Errors: its errno.
pub fn tty_set_termios(fd: &impl AsRawFd, t: &KernelTermios, locked: bool) -> std::io::Result<()> {
    let req = if locked {
        libc::TIOCSLCKTRMIOS
    } else {
        libc::TCSETS
    };
    // SAFETY: the kernel reads one `struct termios` from `t`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req, t as *const KernelTermios) } as libc::c_long)?;
    Ok(())
}

/// `TIOCGWINSZ`: (rows, columns, x pixels, y pixels), see ioctl_tty(2).
///
/// Errors: its errno.
pub fn tty_get_winsize(fd: &impl AsRawFd) -> std::io::Result<[u16; 4]> {
    let mut w = [0u16; 4];
    // SAFETY: the kernel writes one `struct winsize` (four unsigned
    // shorts) to `w`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, w.as_mut_ptr()) } as libc::c_long)?;
    Ok(w)
}

/// `TIOCSWINSZ` with (rows, columns, x pixels, y pixels).
///
/// Errors: its errno.
pub fn tty_set_winsize(fd: &impl AsRawFd, w: [u16; 4]) -> std::io::Result<()> {
    // SAFETY: the kernel reads one `struct winsize` from `w`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, w.as_ptr()) } as libc::c_long)?;
    Ok(())
}

/// A terminal ioctl that writes one int: `TIOCGPTN`, `TIOCGPKT`,
/// `TIOCGPTLCK`, `TIOCGSID`, `TIOCGPGRP`, `FIONREAD` (see ioctl_tty(2),
/// pty(7)).
///
/// Errors: its errno.
pub fn tty_get_int(fd: &impl AsRawFd, req: libc::Ioctl) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: each of these requests writes one int to `v`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v as *mut libc::c_int) } as libc::c_long)?;
    Ok(v)
}

/// A terminal ioctl that reads one int through a pointer: `TIOCPKT`,
/// `TIOCSPTLCK`, `TIOCSPGRP`.
///
/// Errors: its errno.
pub fn tty_set_int(fd: &impl AsRawFd, req: libc::Ioctl, v: i32) -> std::io::Result<()> {
    // SAFETY: each of these requests reads one int from `v`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req, &v as *const libc::c_int) } as libc::c_long)?;
    Ok(())
}

/// `TIOCGPTPEER`: open the slave of the pseudo-terminal master `fd` with
/// open(2) `flags`, without a path lookup (Linux 4.13, see ioctl_tty(2)).
///
/// Errors: its errno (EIO: the pair is locked).
pub fn tty_open_peer(fd: &impl AsRawFd, flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: integer arguments only; the result is a new descriptor.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTPEER, flags as libc::c_ulong) };
    cvt(r as libc::c_long).map(owned)
}

/// poll(2) `fd` for `POLLIN` without waiting: whether it is readable now.
/// On a terminal this also makes the kernel process input received so
/// far (n_tty flushes its pending receive work when polled).
pub fn poll_in_now(fd: &impl AsRawFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1, no timeout.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & libc::POLLIN != 0
}

// ---------------------------------------------------------------------------

/// Fork a child for `criu check` to probe: it sets `*word` to `value` (so
/// that page is present and private in the child), asks to be killed when
/// we die, and then sleeps in `pause(2)` until killed. Returns its pid.
///
/// Errors: the errno of fork.
pub fn fork_probe_child(
    word: &'static std::sync::atomic::AtomicU64,
    value: u64,
) -> std::io::Result<i32> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the child only calls async-signal-safe functions (an atomic
    // store, prctl, getppid, pause, _exit) and never returns from here.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            word.store(value, std::sync::atomic::Ordering::SeqCst);
            // SAFETY: integer-only prctl and plain system calls, as above.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                if libc::getppid() != parent {
                    libc::_exit(0);
                }
                loop {
                    libc::pause();
                }
            }
        }
        pid => Ok(pid),
    }
}

/// `pidfd_open(2)`.
///
/// Errors: its errno.
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    pidfd_open_flags(pid, 0)
}

/// `pidfd_open(2)` with `flags` (`PIDFD_NONBLOCK` = `O_NONBLOCK`).
///
/// Errors: its errno (`ESRCH`: no such process).
pub fn pidfd_open_flags(pid: i32, flags: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) }).map(owned)
}

/// `pidfd_getfd(2)`: a duplicate of descriptor `fd` of the process `pidfd`
/// refers to.
///
/// Errors: its errno.
pub fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) }).map(owned)
}

/// `prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE)`: the size of `struct
/// prctl_mm_map` the kernel expects (see prctl(2)).
///
/// Errors: its errno (EINVAL without CONFIG_CHECKPOINT_RESTORE).
pub fn prctl_mm_map_size() -> std::io::Result<u32> {
    const PR_SET_MM_MAP_SIZE: libc::c_ulong = 15;
    let mut size: libc::c_uint = 0;
    // SAFETY: the kernel writes one unsigned int to `size`.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            PR_SET_MM_MAP_SIZE,
            &mut size as *mut libc::c_uint,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    cvt(r as libc::c_long).map(|_| size)
}

/// `prctl(PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_GET)`
/// (Linux 6.15+): whether the calling process is in timer-ID restore mode.
///
/// Errors: its errno (EINVAL on older kernels).
pub fn timer_restore_ids_get() -> std::io::Result<i32> {
    const PR_TIMER_CREATE_RESTORE_IDS: libc::c_int = 77;
    const GET: libc::c_ulong = 2;
    // SAFETY: integer arguments only.
    let r = unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, GET, 0, 0, 0) };
    cvt(r as libc::c_long).map(|v| v as i32)
}

/// `userfaultfd(2)` with `UFFD_USER_MODE_ONLY` (so an unprivileged caller
/// may use it where `vm.unprivileged_userfaultfd` is 0).
///
/// Errors: its errno.
pub fn userfaultfd() -> std::io::Result<OwnedFd> {
    let flags =
        libc::O_CLOEXEC | libc::O_NONBLOCK | crate::uffd::UFFD_USER_MODE_ONLY as libc::c_int;
    // SAFETY: integer argument only.
    cvt(unsafe { libc::syscall(libc::SYS_userfaultfd, flags) }).map(owned)
}

/// `seccomp(SECCOMP_GET_ACTION_AVAIL)` for `SECCOMP_RET_KILL_PROCESS`:
/// whether seccomp filters (and the action the helper's filter uses) work.
///
/// Errors: its errno.
pub fn seccomp_kill_process_available() -> std::io::Result<()> {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_ulong = 2;
    const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
    let action: u32 = SECCOMP_RET_KILL_PROCESS;
    // SAFETY: the kernel reads one u32 from `action`.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    })
    .map(|_| ())
}

/// `splice(2)` of up to `len` bytes from the pipe `from` to the file `to`
/// at byte `off` of it (its file position is neither used nor moved), with
/// `SPLICE_F_MOVE | SPLICE_F_NONBLOCK` (never waits on the pipe); returns
/// the bytes moved, 0 at end of file.
///
/// Errors: its errno (`EAGAIN`: the pipe is empty).
pub fn splice_nonblock(
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    off: u64,
    len: usize,
) -> std::io::Result<usize> {
    let mut off_out = off as libc::loff_t;
    // SAFETY: both descriptors are borrowed, so open; the NULL input offset
    // means the pipe's own; `off_out` is a live loff_t the kernel updates.
    let r = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            &mut off_out,
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `getsockopt(2)` of an `int` option (e.g. `SOL_SOCKET`, `SO_PEEK_OFF`,
/// see socket(7)) that nix has no typed wrapper for.
///
/// Errors: its errno.
pub fn getsockopt_int(
    fd: std::os::fd::BorrowedFd<'_>,
    level: i32,
    opt: i32,
) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid out-pointers of the sizes passed.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    cvt(r as libc::c_long).map(|_| v)
}

/// `setsockopt(2)` of an `int` option that nix has no typed wrapper for.
///
/// Errors: its errno.
pub fn setsockopt_int(
    fd: std::os::fd::BorrowedFd<'_>,
    level: i32,
    opt: i32,
    v: i32,
) -> std::io::Result<()> {
    // SAFETY: `v` is a valid `int` for the length passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    cvt(r as libc::c_long).map(|_| ())
}

/// What [`recvmsg_fds`] got: the byte count, the descriptors of an
/// `SCM_RIGHTS` message (now owned by this process), the sender's address
/// (datagram sockets), and whether data or control data was cut short
/// (`MSG_TRUNC`, `MSG_CTRUNC`).
pub struct Received {
    /// Bytes placed in the buffer.
    pub len: usize,
    /// Descriptors received with `SCM_RIGHTS` (see unix(7)).
    pub fds: Vec<OwnedFd>,
    /// The sender's address, if the socket reported one.
    pub from: Option<nix::sys::socket::UnixAddr>,
    /// `MSG_TRUNC` or `MSG_CTRUNC` was set.
    pub truncated: bool,
}

/// `recvmsg(2)` on a UNIX socket with room for the most descriptors one
/// message can carry (`SCM_MAX_FD`, 253) and one `SCM_CREDENTIALS`;
/// received descriptors are close-on-exec (`MSG_CMSG_CLOEXEC` is added).
///
/// Errors: its errno.
pub fn recvmsg_fds(
    fd: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
    flags: nix::sys::socket::MsgFlags,
) -> std::io::Result<Received> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrLike, UnixAddr};
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 253], libc::ucred);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<UnixAddr>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        flags | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                use std::os::fd::FromRawFd;
                // SAFETY: the kernel just installed `r` in this process for
                // this message; nothing else knows or owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    // No address (a stream, an unnamed sender) has length 0, which nix's
    // accessors must not see.
    let from = msg
        .address
        .filter(|a| a.len() as usize > std::mem::size_of::<libc::sa_family_t>())
        .filter(|a| a.path().is_some() || a.as_abstract().is_some());
    Ok(Received {
        len: msg.bytes,
        fds,
        from,
        truncated,
    })
}

/// `accept4(2)` with `SOCK_CLOEXEC`, the new connection owned.
///
/// Errors: its errno.
pub fn accept_cloexec(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    // SAFETY: NULL address and length pointers are allowed (no peer address
    // wanted).
    let r = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    cvt(r as libc::c_long).map(owned)
}

/// fcntl(2) commands the libc crate lacks (asm-generic/fcntl.h).
const F_SETSIG: libc::c_int = 10;
const F_GETSIG: libc::c_int = 11;
const F_SETOWN_EX: libc::c_int = 15;
const F_GETOWN_EX: libc::c_int = 16;

/// The owner of the open file description `fd` (fcntl(2) `F_GETOWN_EX`):
/// (`F_OWNER_TID`/`_PID`/`_PGRP`, ID) and its `F_GETSIG` signal.
///
/// Errors: the errno of fcntl.
pub fn file_owner(fd: &impl AsRawFd) -> std::io::Result<(i32, i32, i32)> {
    // struct f_owner_ex { int type; pid_t pid; }
    let mut o = [0i32; 2];
    // SAFETY: F_GETOWN_EX writes one struct f_owner_ex (two ints) into `o`.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, o.as_mut_ptr()) } as i64)?;
    // SAFETY: F_GETSIG takes no pointer.
    let sig = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETSIG) } as i64)?;
    Ok((o[0], o[1], sig as i32))
}

/// Set the owner and signal of the open file description `fd` (fcntl(2)
/// `F_SETOWN_EX`, `F_SETSIG`).
///
/// Errors: the errno of fcntl (`ESRCH`: no such thread, process or group).
pub fn set_file_owner(fd: &impl AsRawFd, kind: i32, pid: i32, sig: i32) -> std::io::Result<()> {
    let o = [kind, pid];
    // SAFETY: F_SETOWN_EX reads one struct f_owner_ex (two ints) from `o`.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, o.as_ptr()) } as i64)?;
    // SAFETY: F_SETSIG takes an integer.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_SETSIG, sig) } as i64)?;
    Ok(())
}

/// `struct flock` of fcntl(2) for a lock of bytes `start` to `end`
/// (inclusive; `None`: to the end of the file, however long), as its 32
/// bytes on x86-64: l_type, l_whence (`SEEK_SET`), l_start, l_len, l_pid 0.
pub fn encode_flock(write: bool, start: u64, end: Option<u64>) -> [u8; 32] {
    let ty = if write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
    let len = lock_len(start, end);
    let mut b = [0u8; 32];
    b[0..2].copy_from_slice(&ty.to_le_bytes());
    b[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_le_bytes());
    b[8..16].copy_from_slice(&start.to_le_bytes());
    b[16..24].copy_from_slice(&len.to_le_bytes());
    b
}

/// `l_len` of a lock of bytes `start` to `end` (inclusive; `None`, and
/// then 0: to the end of the file, however long), see fcntl(2).
fn lock_len(start: u64, end: Option<u64>) -> u64 {
    end.map(|e| e.saturating_sub(start) + 1).unwrap_or(0)
}

/// Take an open file description lock on `fd` without waiting (fcntl(2),
/// `F_OFD_SETLK`), bytes `start` to `end` as [`encode_flock`].
///
/// Errors: the errno of fcntl (`EAGAIN`: someone else holds a conflicting
/// lock).
pub fn ofd_lock(
    fd: &impl AsRawFd,
    write: bool,
    start: u64,
    end: Option<u64>,
) -> std::io::Result<()> {
    let mut fl: libc::flock = libc::flock {
        l_type: if write { libc::F_WRLCK } else { libc::F_RDLCK } as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: start as i64,
        l_len: lock_len(start, end) as i64,
        l_pid: 0,
    };
    // SAFETY: F_OFD_SETLK reads one struct flock from `fl`.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) } as i64)?;
    Ok(())
}

/// flock(2) `fd` shared or exclusive, without waiting.
///
/// Errors: the errno of flock (`EWOULDBLOCK`: held by someone else).
pub fn flock_nb(fd: &impl AsRawFd, write: bool) -> std::io::Result<()> {
    let op = if write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::flock(fd.as_raw_fd(), op) } as i64)?;
    Ok(())
}

/// Take a read or write lease on `fd` (fcntl(2), `F_SETLEASE`).
///
/// Errors: the errno of fcntl.
pub fn set_lease(fd: &impl AsRawFd, write: bool) -> std::io::Result<()> {
    let ty = if write { libc::F_WRLCK } else { libc::F_RDLCK };
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, ty) } as i64)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Kinds of open file description (see fdkind/): calls nix does not wrap
// with the values criu needs (raw signal masks, wd numbers, tick counts).

/// `tee(2)` of up to `len` bytes from the pipe `from` into the pipe `to`
/// with `SPLICE_F_NONBLOCK`, without consuming them from `from`; returns the
/// bytes duplicated.
///
/// Errors: its errno (`EAGAIN`: `from` is empty or `to` is full).
pub fn tee_nonblock(
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    len: usize,
) -> std::io::Result<usize> {
    // SAFETY: integer arguments only; both descriptors are borrowed, so open.
    let r = unsafe {
        libc::tee(
            from.as_raw_fd(),
            to.as_raw_fd(),
            len,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    cvt(r as libc::c_long).map(|n| n as usize)
}

/// `ioctl(FIONREAD)`: bytes waiting to be read from `fd` (a pipe, socket or
/// inotify instance; see pipe(7), inotify(7)).
///
/// Errors: its errno.
pub fn fionread(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: the kernel writes one int to `n`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n as *mut libc::c_int) };
    cvt(r as libc::c_long).map(|_| n as usize)
}

/// `signalfd4(2)` creating a new signalfd for the raw 64-bit signal mask
/// `mask` (bit `n - 1` for signal `n`, as in `/proc/PID/fdinfo` `sigmask:`)
/// with `flags` (`SFD_NONBLOCK`, `SFD_CLOEXEC`).
///
/// Errors: its errno.
pub fn signalfd(mask: u64, flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: the kernel reads 8 bytes (the size passed) from `mask`.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &mask as *const u64,
            std::mem::size_of::<u64>(),
            flags,
        )
    })
    .map(owned)
}

/// `timerfd_create(2)`.
///
/// Errors: its errno.
pub fn timerfd_create(clockid: i32, flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::timerfd_create(clockid, flags) } as libc::c_long).map(owned)
}

fn ns_to_timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

fn timespec_to_ns(t: &libc::timespec) -> u64 {
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `timerfd_gettime(2)`: (time until the next expiration, interval), both
/// in nanoseconds; (0, _) when disarmed.
///
/// Errors: its errno.
pub fn timerfd_gettime(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<(u64, u64)> {
    let mut cur = libc::itimerspec {
        it_interval: ns_to_timespec(0),
        it_value: ns_to_timespec(0),
    };
    // SAFETY: the kernel writes one itimerspec to `cur`.
    cvt(unsafe { libc::timerfd_gettime(fd.as_raw_fd(), &mut cur) } as libc::c_long)?;
    Ok((
        timespec_to_ns(&cur.it_value),
        timespec_to_ns(&cur.it_interval),
    ))
}

/// `timerfd_settime(2)`: arm `fd` to expire at `value_ns` (relative, or
/// absolute on its clock with `TFD_TIMER_ABSTIME` in `flags`) and then
/// every `interval_ns` nanoseconds.
///
/// Errors: its errno.
pub fn timerfd_settime(
    fd: std::os::fd::BorrowedFd<'_>,
    flags: i32,
    value_ns: u64,
    interval_ns: u64,
) -> std::io::Result<()> {
    let new = libc::itimerspec {
        it_interval: ns_to_timespec(interval_ns),
        it_value: ns_to_timespec(value_ns),
    };
    // SAFETY: the kernel reads one itimerspec from `new`; NULL old value.
    cvt(
        unsafe { libc::timerfd_settime(fd.as_raw_fd(), flags, &new, std::ptr::null_mut()) }
            as libc::c_long,
    )
    .map(|_| ())
}

/// `ioctl(TFD_IOC_SET_TICKS)`: set the count of expirations not yet read
/// from a timerfd (see timerfd_create(2); needs `CONFIG_CHECKPOINT_RESTORE`).
///
/// Errors: its errno.
pub fn timerfd_set_ticks(fd: std::os::fd::BorrowedFd<'_>, ticks: u64) -> std::io::Result<()> {
    // _IOW('T', 0, u64)
    const TFD_IOC_SET_TICKS: libc::c_ulong = (1 << 30) | (8 << 16) | ((b'T' as libc::c_ulong) << 8);
    // SAFETY: the kernel reads one u64 from `ticks`.
    cvt(
        unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) }
            as libc::c_long,
    )
    .map(|_| ())
}

/// `inotify_init1(2)`.
///
/// Errors: its errno.
pub fn inotify_init1(flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: integer argument only.
    cvt(unsafe { libc::inotify_init1(flags) } as libc::c_long).map(owned)
}

/// `inotify_add_watch(2)`: the watch descriptor of `path` with `mask`.
///
/// Errors: its errno.
pub fn inotify_add_watch(
    fd: std::os::fd::BorrowedFd<'_>,
    path: &std::ffi::CStr,
    mask: u32,
) -> std::io::Result<i32> {
    // SAFETY: `path` is a NUL-terminated string the kernel only reads.
    cvt(unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } as libc::c_long)
        .map(|w| w as i32)
}

/// `inotify_rm_watch(2)`.
///
/// Errors: its errno.
pub fn inotify_rm_watch(fd: std::os::fd::BorrowedFd<'_>, wd: i32) -> std::io::Result<()> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) } as libc::c_long).map(|_| ())
}

/// `open_by_handle_at(2)` with `O_PATH`: the file named by the handle
/// (`handle_type`, `bytes`, as in `/proc/PID/fdinfo` `fhandle-type:` and
/// `f_handle:`) on the file system `mount_fd` is on.
///
/// Errors: its errno (`EPERM` without `CAP_DAC_READ_SEARCH`, `ESTALE` when
/// the file is gone).
pub fn open_by_handle(
    mount_fd: std::os::fd::BorrowedFd<'_>,
    handle_type: i32,
    bytes: &[u8],
) -> std::io::Result<OwnedFd> {
    // struct file_handle { u32 handle_bytes; int handle_type; u8 f_handle[]; }
    let mut buf = vec![0u8; 8 + bytes.len()];
    buf[..4].copy_from_slice(&(bytes.len() as u32).to_ne_bytes());
    buf[4..8].copy_from_slice(&handle_type.to_ne_bytes());
    buf[8..].copy_from_slice(bytes);
    // SAFETY: `buf` holds a complete struct file_handle with `handle_bytes`
    // bytes of handle; the kernel reads it and writes nothing.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            buf.as_mut_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    })
    .map(owned)
}

/// `eventfd(2)` with a 32-bit initial counter and `flags` (`EFD_CLOEXEC`,
/// `EFD_NONBLOCK`, `EFD_SEMAPHORE`).
///
/// Errors: its errno.
pub fn eventfd(initval: u32, flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::eventfd(initval, flags) } as libc::c_long).map(owned)
}

/// `kcmp(2)` with `KCMP_EPOLL_TFD`: whether descriptor `fd` of `pid` is
/// the file registered as `tfd` in the epoll instance at descriptor `epfd`
/// of `pid`.
///
/// Errors: its errno (`EBADF`: `fd` is not open; `ENOENT`: no such
/// registration; `EINVAL` on kernels without it).
pub fn kcmp_epoll_tfd(pid: i32, fd: i32, epfd: i32, tfd: i32) -> std::io::Result<bool> {
    const KCMP_EPOLL_TFD: libc::c_long = 7;
    // struct kcmp_epoll_slot { __u32 efd; __u32 tfd; __u64 toff; }
    let slot: [u32; 4] = [epfd as u32, tfd as u32, 0, 0];
    // SAFETY: the kernel reads the 16-byte slot; the rest are integers.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_EPOLL_TFD, fd, slot.as_ptr()) };
    cvt(r).map(|r| r == 0)
}

/// `fanotify_init(2)`.
///
/// Errors: its errno (`EPERM` without `CAP_SYS_ADMIN` for most flags).
pub fn fanotify_init(flags: u32, event_f_flags: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::fanotify_init(flags, event_f_flags) } as libc::c_long).map(owned)
}

/// `fanotify_mark(2)` of `path` (relative to the working directory).
///
/// Errors: its errno.
pub fn fanotify_mark(
    fd: std::os::fd::BorrowedFd<'_>,
    flags: u32,
    mask: u64,
    path: &std::ffi::CStr,
) -> std::io::Result<()> {
    // SAFETY: `path` is a NUL-terminated string the kernel only reads.
    cvt(
        unsafe { libc::fanotify_mark(fd.as_raw_fd(), flags, mask, libc::AT_FDCWD, path.as_ptr()) }
            as libc::c_long,
    )
    .map(|_| ())
}

// ---------------------------------------------------------------------------
// Socket options and queue sizes for network sockets (see fdkind/inet.rs).

/// `getsockopt(2)` of option `name` at `level` into `buf`; returns how many
/// bytes the kernel wrote.
///
/// Errors: its errno (ENOPROTOOPT for an option the socket lacks).
pub fn getsockopt_raw(
    fd: std::os::fd::BorrowedFd<'_>,
    level: i32,
    name: i32,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is valid for writes of `len` bytes and `len` is a valid
    // in/out pointer; the kernel writes at most `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    cvt(r as libc::c_long)?;
    Ok(len as usize)
}

/// `setsockopt(2)` of option `name` at `level` to the bytes `val`.
///
/// Errors: its errno.
pub fn setsockopt_raw(
    fd: std::os::fd::BorrowedFd<'_>,
    level: i32,
    name: i32,
    val: &[u8],
) -> std::io::Result<()> {
    // SAFETY: `val` is valid for reads of its length; the kernel only reads.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            val.as_ptr().cast(),
            val.len() as libc::socklen_t,
        )
    };
    cvt(r as libc::c_long).map(drop)
}

/// An `ioctl(2)` that writes one `int`, such as `SIOCINQ` or `SIOCOUTQ`
/// (see tcp(7), udp(7)).
///
/// Errors: its errno.
pub fn ioctl_get_int(fd: std::os::fd::BorrowedFd<'_>, request: u64) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the requests this is used with write one int to the pointer,
    // which is valid for that write.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut v as *mut libc::c_int) };
    cvt(r as libc::c_long)?;
    Ok(v)
}
