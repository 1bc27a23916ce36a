//! Every `unsafe` block of the helper lives here, each with the reason it is
//! sound. The rest of the crate calls these small, safe functions.
//!
//! Where nix wraps a call safely the rest of the crate uses nix directly;
//! this module covers the calls nix does not wrap (or wraps as `unsafe`).

use nix::errno::Errno;
use nix::unistd::{ForkResult, Pid};
use shared_ipc::MAX_FDS_PER_FRAME;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

core::arch::global_asm!(
    ".pushsection .text.criu_helper_syscall_gadget,\"ax\",@progbits",
    ".globl criu_helper_syscall_gadget",
    ".type criu_helper_syscall_gadget, @function",
    "criu_helper_syscall_gadget:",
    "syscall",
    "ud2",
    ".size criu_helper_syscall_gadget, . - criu_helper_syscall_gadget",
    ".popsection",
);

extern "C" {
    /// `syscall; ud2` in the helper's text. Never called from Rust: a
    /// restore stub (a fork of the helper) is pointed at it with ptrace.
    fn criu_helper_syscall_gadget();
}

/// Address of the `syscall` instruction in the helper's own text. A stub is a
/// fork of the helper, so the same address holds the same bytes in it.
pub fn gadget_addr() -> u64 {
    criu_helper_syscall_gadget as *const () as usize as u64
}

/// `ptrace` requests that nix does not wrap (see ptrace(2)).
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
/// `NT_X86_XSTATE` from `<elf.h>`: the XSAVE area regset.
const NT_X86_XSTATE: libc::c_ulong = 0x202;

/// The type of socket `fd` is (getsockopt(2), `SO_TYPE`).
pub fn socket_type(fd: RawFd) -> Result<i32, Errno> {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `ty` and `len` are valid for writes of the sizes given; an
    // unknown or closed fd only makes the call fail.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    Errno::result(r).map(|_| ty)
}

/// Close every descriptor from `first` up (close_range(2)).
pub fn close_from(first: u32) -> Result<(), Errno> {
    // SAFETY: called at start-up before any Rust object owns a descriptor
    // numbered `first` or above, so nothing will use or close them later.
    let r = unsafe { libc::close_range(first, u32::MAX, 0) };
    Errno::result(r).map(drop)
}

/// Whether descriptor `fd` is open (fcntl(2), `F_GETFD`).
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags; no memory involved.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Take ownership of the channel descriptor inherited at
/// [`shared_ipc::HELPER_CHANNEL_FD`]. Call once.
pub fn take_channel_fd() -> OwnedFd {
    // SAFETY: main() checked that this descriptor is an open SEQPACKET
    // socket and calls this exactly once; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(shared_ipc::HELPER_CHANNEL_FD) }
}

/// Close the channel descriptor number in the spawner, which inherits it by
/// fork but never owns it as an object.
pub fn close_channel_fd_in_child() {
    // SAFETY: in the freshly forked spawner no Rust object owns this number
    // (the helper takes ownership only after the fork).
    unsafe { libc::close(shared_ipc::HELPER_CHANNEL_FD) };
}

/// Set every signal's disposition to `SIG_DFL` (rt_sigaction(2), raw: the
/// libc wrapper refuses its reserved signals 32 and 33 and adds
/// `SA_RESTORER`, which a stub would pass on to the restored process).
/// Errors for signals that cannot be changed (`SIGKILL`, `SIGSTOP`) are
/// ignored.
pub fn reset_signal_dispositions() {
    for sig in 1..=libc::SIGRTMAX() {
        set_disposition(sig, libc::SIG_DFL);
    }
}

/// Ignore `SIGPIPE` and `SIGXFSZ` so that writing to a closed image pipe,
/// or past the caller's `RLIMIT_FSIZE`, is an `EPIPE`/`EFBIG` error, not the
/// death of the helper before its clean-up.
pub fn ignore_sigpipe() {
    set_disposition(libc::SIGPIPE, libc::SIG_IGN);
    set_disposition(libc::SIGXFSZ, libc::SIG_IGN);
}

fn set_disposition(sig: libc::c_int, handler: libc::sighandler_t) {
    // The kernel's struct sigaction on x86-64: handler, flags, restorer,
    // mask (8 bytes: the sigsetsize argument).
    let ksa: [u64; 4] = [handler as u64, 0, 0, 0];
    // SAFETY: `ksa` is a valid kernel sigaction read by the kernel only;
    // SIG_DFL/SIG_IGN install no code as a handler, so no signal-safety
    // question arises.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            ksa.as_ptr(),
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
}

/// fork(2). Only called while the helper is single-threaded (start-up).
pub fn fork() -> Result<ForkResult, Errno> {
    // SAFETY: the helper has one thread at this point (main() runs it before
    // any thread could be started), so the child may run ordinary Rust code.
    unsafe { nix::unistd::fork() }
}

/// pidfd_open(2): a descriptor that refers to process `pid` for its life.
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = Errno::result(r)?;
    // SAFETY: the kernel just created this descriptor for us; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// pidfd_open(2) with `PIDFD_THREAD` (Linux 6.9+): a descriptor for one
/// thread; `EINVAL` on older kernels for a thread that is not a leader.
pub fn pidfd_open_thread(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall with integer arguments (PIDFD_THREAD is O_EXCL).
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), libc::O_EXCL) };
    let fd = Errno::result(r)?;
    // SAFETY: the kernel just created this descriptor for us; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// pidfd_getfd(2): a copy (close-on-exec) of descriptor `fd` of the task
/// `pidfd` refers to. The kernel allows it to a tracer
/// (`PTRACE_MODE_ATTACH_REALCREDS`).
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall with integer arguments; flags must be 0.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    let fd = Errno::result(r)?;
    // SAFETY: the kernel just created this descriptor for us; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// pidfd_send_signal(2) with no siginfo and no flags.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> Result<(), Errno> {
    // SAFETY: plain syscall; the NULL siginfo means "as kill(2)".
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// waitpid(2) for exactly `pid` with `__WALL`, retried on `EINTR`; returns
/// the raw status (nix's decoder rejects real-time stop signals).
pub fn waitpid_all(pid: Pid) -> Result<i32, Errno> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is valid for writes.
        let r = unsafe { libc::waitpid(pid.as_raw(), &mut status, libc::__WALL) };
        match Errno::result(r) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(status),
        }
    }
}

fn ptrace_raw(
    req: libc::c_uint,
    pid: Pid,
    addr: *mut libc::c_void,
    data: *mut libc::c_void,
) -> Result<libc::c_long, Errno> {
    Errno::clear();
    // SAFETY: every caller passes `addr`/`data` that are either integers the
    // kernel does not dereference, or pointers to buffers valid for the size
    // that request reads or writes (documented at each caller).
    let r = unsafe { libc::ptrace(req, pid.as_raw(), addr, data) };
    Errno::result(r)
}

/// `PTRACE_CONT` with signal number `sig` (0 for none), which nix cannot
/// express for real-time signals (ptrace(2)).
pub fn ptrace_cont(pid: Pid, sig: i32) -> Result<(), Errno> {
    ptrace_raw(
        libc::PTRACE_CONT,
        pid,
        std::ptr::null_mut(),
        sig as usize as *mut libc::c_void,
    )
    .map(drop)
}

/// `PTRACE_GETREGSET` `NT_X86_XSTATE` into `buf`; returns the length the
/// kernel filled in (ptrace(2)).
pub fn get_xstate(pid: Pid, buf: &mut [u8]) -> Result<usize, Errno> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // iov points at `buf`, writable for iov_len bytes; the kernel writes at
    // most that and updates iov_len.
    ptrace_raw(
        libc::PTRACE_GETREGSET,
        pid,
        NT_X86_XSTATE as *mut libc::c_void,
        (&mut iov as *mut libc::iovec).cast(),
    )?;
    Ok(iov.iov_len.min(buf.len()))
}

/// `PTRACE_SETREGSET` `NT_X86_XSTATE` from `data` (ptrace(2)).
pub fn set_xstate(pid: Pid, data: &[u8]) -> Result<(), Errno> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // The kernel only reads iov_len bytes from `data` for SETREGSET.
    ptrace_raw(
        libc::PTRACE_SETREGSET,
        pid,
        NT_X86_XSTATE as *mut libc::c_void,
        (&mut iov as *mut libc::iovec).cast(),
    )
    .map(drop)
}

/// `PTRACE_GETSIGMASK` (ptrace(2)).
pub fn get_sigmask(pid: Pid) -> Result<u64, Errno> {
    let mut mask: u64 = 0;
    // addr is the size of the mask (8); data points at 8 writable bytes.
    ptrace_raw(
        PTRACE_GETSIGMASK,
        pid,
        8 as *mut libc::c_void,
        (&mut mask as *mut u64).cast(),
    )?;
    Ok(mask)
}

/// `PTRACE_SETSIGMASK` (ptrace(2)); the kernel drops `SIGKILL`/`SIGSTOP`.
pub fn set_sigmask(pid: Pid, mask: u64) -> Result<(), Errno> {
    let mut mask = mask;
    // addr is the size of the mask (8); data points at 8 readable bytes.
    ptrace_raw(
        PTRACE_SETSIGMASK,
        pid,
        8 as *mut libc::c_void,
        (&mut mask as *mut u64).cast(),
    )
    .map(drop)
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// `PTRACE_PEEKSIGINFO` into `buf` (a multiple of 128 bytes); returns the
/// number of records copied (ptrace(2)).
pub fn peek_siginfo(pid: Pid, shared: bool, offset: u32, buf: &mut [u8]) -> Result<usize, Errno> {
    let nr = (buf.len() / shared_ipc::SIGINFO_SIZE) as i32;
    let mut args = PeekSiginfoArgs {
        off: u64::from(offset),
        flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
        nr,
    };
    // addr points at the args struct; data at `nr` * 128 writable bytes.
    let n = ptrace_raw(
        PTRACE_PEEKSIGINFO,
        pid,
        (&mut args as *mut PeekSiginfoArgs).cast(),
        buf.as_mut_ptr().cast(),
    )?;
    Ok((n.max(0) as usize).min(nr as usize))
}

/// Kernel `struct ptrace_rseq_configuration`.
#[repr(C)]
#[derive(Default)]
pub struct RseqConfiguration {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

/// `PTRACE_GET_RSEQ_CONFIGURATION` (ptrace(2)).
pub fn get_rseq(pid: Pid) -> Result<RseqConfiguration, Errno> {
    let mut conf = RseqConfiguration::default();
    // addr is the size of the struct; data points at that many writable bytes.
    ptrace_raw(
        PTRACE_GET_RSEQ_CONFIGURATION,
        pid,
        std::mem::size_of::<RseqConfiguration>() as *mut libc::c_void,
        (&mut conf as *mut RseqConfiguration).cast(),
    )?;
    Ok(conf)
}

/// Kernel `struct clone_args` (clone3(2)), `CLONE_ARGS_SIZE_VER2`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What a new stub does with its descriptors: the i-th of `received` goes to
/// number `targets[i]`; everything else is closed.
pub struct StubFds<'a> {
    /// Descriptors open in the spawner, as received.
    pub received: &'a [RawFd],
    /// Where each goes in the stub.
    pub targets: &'a [RawFd],
    /// `targets`, sorted ascending.
    pub sorted: &'a [RawFd],
    /// First number above every target and every descriptor open now.
    pub base: RawFd,
    /// Setuid mode: the credentials the stub drops to before it waits.
    pub creds: Option<StubCreds<'a>>,
}

/// The caller's credentials, for a stub to take (setuid mode).
#[derive(Clone, Copy)]
pub struct StubCreds<'a> {
    /// Real uid of the caller.
    pub uid: libc::uid_t,
    /// Real gid of the caller.
    pub gid: libc::gid_t,
    /// Supplementary groups of the caller.
    pub groups: &'a [libc::gid_t],
}

/// capget(2) header and data, `_LINUX_CAPABILITY_VERSION_3` (two data
/// structs for 64 capability bits).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// In a new stub: become the caller (groups, then gid, then uid: after
/// setresuid(2) to a non-zero uid the process cannot change its groups any
/// more), become dumpable again (a credential change clears it; the caller
/// could not trace a non-dumpable task), and prove that no capability is
/// left. Raw calls only; dies on any failure.
fn stub_drop_privilege(c: &StubCreds<'_>) {
    // SAFETY: `groups` is valid for reads of `len` gid_t values.
    if unsafe { libc::setgroups(c.groups.len(), c.groups.as_ptr()) } != 0 {
        stub_die();
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresgid(c.gid, c.gid, c.gid) } != 0 {
        stub_die();
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresuid(c.uid, c.uid, c.uid) } != 0 {
        stub_die();
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) } != 0 {
        stub_die();
    }
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `hdr` is a valid header and `data` holds the two structs that
    // version 3 writes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if r != 0
        || data
            .iter()
            .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0)
    {
        stub_die();
    }
    // The ambient set is a subset of permitted, so it is empty too; the
    // uids are checked once more as the kernel sees them.
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the three pointers are valid for writes of one uid_t each.
    if unsafe { libc::getresuid(&mut r, &mut e, &mut s) } != 0 || [r, e, s] != [c.uid; 3] {
        stub_die();
    }
}

/// clone3(2) with `CLONE_PARENT` and `set_tid = [pid]`: create a process with
/// exactly PID `pid` whose parent is our parent (the helper). The child sets
/// up its descriptors and waits in pause(2); it never returns from here.
/// Returns the new PID in the caller.
pub fn clone_stub(pid: Pid, fds: &StubFds<'_>, helper: Pid) -> Result<Pid, Errno> {
    if fds.received.len() != fds.targets.len()
        || fds.targets.len() != fds.sorted.len()
        || fds.received.len() > MAX_FDS_PER_FRAME
    {
        return Err(Errno::EINVAL);
    }
    let set_tid: [libc::pid_t; 1] = [pid.as_raw()];
    let args = CloneArgs {
        flags: libc::CLONE_PARENT as u64,
        exit_signal: 0,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: `args` and `set_tid` are valid for the call. Without CLONE_VM
    // the child gets a copy of our memory and stack, so returning from
    // syscall() in it is sound; the child then only makes raw
    // async-signal-safe calls and never returns (stub_main).
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match Errno::result(r)? {
        0 => stub_main(fds, helper),
        child => Ok(Pid::from_raw(child as libc::pid_t)),
    }
}

/// The body of a new stub: no allocation, raw syscalls only.
fn stub_main(fds: &StubFds<'_>, helper: Pid) -> ! {
    let mut tmp: [RawFd; MAX_FDS_PER_FRAME] = [-1; MAX_FDS_PER_FRAME];
    for (i, &fd) in fds.received.iter().enumerate() {
        // SAFETY: descriptor-number juggling, no memory is involved.
        let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, fds.base) };
        if r < 0 {
            stub_die();
        }
        tmp[i] = r;
    }
    for (i, &target) in fds.targets.iter().enumerate() {
        // SAFETY: as above; dup2 clears close-on-exec on the target.
        if unsafe { libc::dup2(tmp[i], target) } < 0 {
            stub_die();
        }
    }
    let mut next: u32 = 0;
    for &t in fds.sorted {
        let t = t as u32;
        if t > next {
            // SAFETY: in the stub nothing owns these numbers as objects.
            unsafe { libc::close_range(next, t - 1, 0) };
        }
        next = t + 1;
    }
    // SAFETY: as above.
    unsafe { libc::close_range(next, u32::MAX, 0) };
    // Before anything the frontend chooses can run in this process: it must
    // hold no privilege the caller lacks.
    if let Some(c) = &fds.creds {
        stub_drop_privilege(c);
    }
    // After the credential change, which clears the parent-death signal.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } != helper.as_raw() {
        stub_die();
    }
    loop {
        // SAFETY: pause(2) takes no arguments; the helper's PTRACE_INTERRUPT
        // stops the stub here.
        unsafe { libc::syscall(libc::SYS_pause) };
    }
}

fn stub_die() -> ! {
    // SAFETY: _exit(2) ends the stub without running any Rust code.
    unsafe { libc::_exit(127) }
}
