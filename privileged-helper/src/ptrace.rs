//! Tracing one task: seize, wait for stops, inject a system call, release.
//! See ptrace(2) for every request used here.

use crate::sys;
use nix::errno::Errno;
use nix::sys::ptrace::{self, Options};
use nix::unistd::Pid;
use shared_ipc::{DenyReason, ErrorKind, ReleaseMode, UserRegs};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

/// A failed step: what the frontend receives as `Response::Error`, or as
/// `Response::Denied` when `deny` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fail {
    /// Which step failed.
    pub kind: ErrorKind,
    /// errno of the failing call, or 0.
    pub errno: i32,
    /// Setuid mode: the task may not be touched, and why.
    pub deny: Option<DenyReason>,
}

impl Fail {
    /// A failure with no errno.
    pub fn bare(kind: ErrorKind) -> Fail {
        Fail::new(kind, 0)
    }

    /// A failure of step `kind` with `errno`.
    pub fn new(kind: ErrorKind, errno: i32) -> Fail {
        Fail {
            kind,
            errno,
            deny: None,
        }
    }

    /// A refusal (setuid mode checks, or the task exec'd while traced).
    pub fn denied(reason: DenyReason) -> Fail {
        Fail {
            kind: ErrorKind::Denied,
            errno: 0,
            deny: Some(reason),
        }
    }

    /// Whether the task is no longer ours to act on: it is gone, or it was
    /// refused or let go.
    pub fn lost_task(&self) -> bool {
        self.kind == ErrorKind::Gone || self.deny.is_some()
    }
}

/// Map an errno to a failure of step `kind`.
pub fn on(kind: ErrorKind) -> impl Fn(Errno) -> Fail {
    move |e| Fail::new(kind, e as i32)
}

/// A `PTRACE_EVENT_STOP` (ptrace(2), "group-stop" and `PTRACE_INTERRUPT`).
const PTRACE_EVENT_STOP: i32 = 128;
/// `PTRACE_EVENT_FORK`, `_VFORK`, `_CLONE`: the tracee created a task
/// (`PTRACE_O_TRACEFORK`, `_TRACEVFORK`, `_TRACECLONE`).
const PTRACE_EVENT_FORK: i32 = 1;
const PTRACE_EVENT_VFORK: i32 = 2;
const PTRACE_EVENT_CLONE: i32 = 3;

/// After a fork/clone event stop of `parent`: the new task's ID
/// (`PTRACE_GETEVENTMSG`), once the task sits in its first stop. It is
/// auto-attached with the parent's options and stops before running any
/// instruction (`PTRACE_EVENT_STOP`, as the parent was seized).
fn new_task_stop(parent: Pid) -> Result<Pid, Fail> {
    let msg = ptrace::getevent(parent).map_err(on(ErrorKind::Clone))?;
    let child = Pid::from_raw(
        i32::try_from(msg)
            .ok()
            .filter(|&p| p > 0)
            .ok_or(Fail::bare(ErrorKind::Clone))?,
    );
    match wait(child, ErrorKind::Clone)? {
        Stop::Event | Stop::Signal(libc::SIGSTOP) => Ok(child),
        Stop::Exited(_) | Stop::Killed(_) => Err(Fail::bare(ErrorKind::Gone)),
        _ => Err(Fail::bare(ErrorKind::UnexpectedStop)),
    }
}
/// `PTRACE_EVENT_EXEC`: the task completed an execve(2)
/// (`PTRACE_O_TRACEEXEC`).
const PTRACE_EVENT_EXEC: i32 = 4;

/// How a waited-for task stopped or ended (see waitpid(2), ptrace(2)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `_exit` with a code.
    Exited(i32),
    /// Killed by a signal.
    Killed(i32),
    /// Syscall-entry or -exit stop (`SIGTRAP | 0x80` thanks to
    /// `PTRACE_O_TRACESYSGOOD`).
    Syscall,
    /// `PTRACE_EVENT_STOP`: interrupt or group-stop.
    Event,
    /// `PTRACE_EVENT_EXEC`: the task runs a new program.
    Exec,
    /// Another ptrace event (none are enabled; treated as unexpected).
    OtherEvent(i32),
    /// Signal-delivery-stop for this signal.
    Signal(i32),
}

/// Decode a raw wait status.
pub fn classify(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        Stop::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Stop::Killed(libc::WTERMSIG(status))
    } else {
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        if sig == libc::SIGTRAP | 0x80 {
            Stop::Syscall
        } else if event == PTRACE_EVENT_STOP {
            Stop::Event
        } else if event == PTRACE_EVENT_EXEC {
            Stop::Exec
        } else if event != 0 {
            Stop::OtherEvent(event)
        } else {
            Stop::Signal(sig)
        }
    }
}

/// Wait for the next stop of `pid` (`__WALL`, `EINTR` retried).
pub fn wait(pid: Pid, kind: ErrorKind) -> Result<Stop, Fail> {
    sys::waitpid_all(pid).map(classify).map_err(on(kind))
}

/// Seized live task or restore stub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A live task seized with `Request::Seize`.
    Target,
    /// A stub created with `Request::CreateStub`.
    Stub,
}

/// The stop a tracee is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastStop {
    /// `PTRACE_EVENT_STOP` or a signal-delivery-stop: the kernel applies
    /// syscall restart itself when the task resumes.
    Interrupt,
    /// Syscall-exit stop after an injected call: the kernel does not.
    SyscallExit,
}

/// A task traced by this helper.
pub struct Tracee {
    /// Its pid.
    pub pid: Pid,
    /// pidfd_open(2) descriptor, for signals that cannot hit a reused pid.
    pub pidfd: OwnedFd,
    /// `/proc/PID/mem`, read-write.
    pub mem: File,
    /// Target or stub.
    pub kind: Kind,
    /// Registers at seize time (put back on release of a target).
    pub saved_regs: libc::user_regs_struct,
    /// Blocked signals at seize time.
    pub saved_sigmask: u64,
    /// Address of a checked `syscall` instruction.
    pub gadget: Option<u64>,
    /// The stop the task is in.
    pub last_stop: LastStop,
    /// A signal caught in a signal-delivery-stop that must be re-sent.
    pub pending_signal: Option<i32>,
    /// System calls injected so far (for the security log).
    pub injected: u32,
    /// `WriteMemory` requests so far (for the security log).
    pub writes: u32,
    /// Its thread group ID (its pid for a process, the leader's for a thread).
    pub tgid: Pid,
    /// Tasks the last injected call created (`clone3`, `fork`...), already
    /// in their first stop; the server takes them over as stubs.
    pub new_tasks: Vec<Pid>,
}

/// A traced task stopped at `PTRACE_EVENT_EXEC`: it runs a new program,
/// possibly with other credentials. Detach at once, before that program runs
/// one instruction, without putting back any register (they belong to the
/// new program), and refuse.
pub fn let_go(pid: Pid) -> Fail {
    let _ = ptrace::detach(pid, None);
    Fail::denied(DenyReason::Exec)
}

/// Seize `pid` (`PTRACE_SEIZE` with `opts`, then `PTRACE_INTERRUPT`) and wait
/// until it is in the interrupt stop. Signals that were about to be
/// delivered are delivered on the way, as the kernel would have.
/// Detaches again on failure.
pub fn seize(pid: Pid, opts: Options) -> Result<(), Fail> {
    seize_checked(pid, opts, &|| Ok(()))
}

/// [`seize`] with `check` run between `PTRACE_SEIZE` and `PTRACE_INTERRUPT`.
/// `PTRACE_SEIZE` finds the task by PID; if the PID changed hands since the
/// caller's last check (an untraced thread exec'd a setuid program and took
/// it over), `check` fails and the task is let go before it was ever
/// stopped.
pub fn seize_checked(
    pid: Pid,
    opts: Options,
    check: &dyn Fn() -> Result<(), Fail>,
) -> Result<(), Fail> {
    ptrace::seize(pid, opts).map_err(on(ErrorKind::Seize))?;
    if let Err(f) = check() {
        let _ = ptrace::detach(pid, None);
        return Err(f);
    }
    let r = ptrace::interrupt(pid)
        .map_err(on(ErrorKind::Interrupt))
        .and_then(|()| wait_event_stop(pid));
    if let Err(f) = r {
        if !f.lost_task() {
            let _ = ptrace::detach(pid, None);
        }
    }
    r
}

/// Wait for the `PTRACE_EVENT_STOP` of a pending interrupt, letting
/// signal-delivery-stops through with their signal.
fn wait_event_stop(pid: Pid) -> Result<(), Fail> {
    // A task can have at most ~64 distinct pending standard signals plus
    // queued real-time ones; bound the loop anyway.
    for _ in 0..4096 {
        match wait(pid, ErrorKind::Interrupt)? {
            Stop::Event => return Ok(()),
            Stop::Signal(sig) => sys::ptrace_cont(pid, sig).map_err(on(ErrorKind::Interrupt))?,
            Stop::Syscall | Stop::OtherEvent(_) => {
                sys::ptrace_cont(pid, 0).map_err(on(ErrorKind::Interrupt))?
            }
            Stop::Exec => return Err(let_go(pid)),
            Stop::Exited(_) | Stop::Killed(_) => return Err(Fail::bare(ErrorKind::Gone)),
        }
    }
    Err(Fail::bare(ErrorKind::Interrupt))
}

/// Run one system call in a stopped tracee through its gadget: registers set
/// to `nr`/`args`, `rip` at the gadget, `orig_rax = -1` (no restart logic on
/// resume), then `PTRACE_SYSCALL` to the entry and to the exit stop.
///
/// For a target (a live task being dumped) every signal is blocked for the
/// duration of the call, and afterwards — whatever happened — its seize-time
/// signal mask and registers are put back, ready to resume. Between requests
/// a target is therefore always in a state it can run from: if the helper
/// dies, the kernel detaches it and it carries on unharmed.
///
/// On a signal-delivery-stop the task stays in it, the signal is kept for
/// release and `UnexpectedStop` with the signal number is returned.
pub fn inject_syscall(t: &mut Tracee, nr: u64, args: [u64; 6]) -> Result<i64, Fail> {
    let gadget = t.gadget.ok_or(Fail::bare(ErrorKind::BadGadget))?;
    if t.kind == Kind::Target {
        sys::set_sigmask(t.pid, !0).map_err(on(ErrorKind::Sigmask))?;
    }
    let result = run_at_gadget(t, gadget, nr, args);
    if t.kind == Kind::Target && !result.as_ref().is_err_and(Fail::lost_task) {
        let back = regs_from_wire(&restart_fixup(&regs_to_wire(&t.saved_regs), t.last_stop));
        let put_back = sys::set_sigmask(t.pid, t.saved_sigmask)
            .map_err(on(ErrorKind::Sigmask))
            .and(ptrace::setregs(t.pid, back).map_err(on(ErrorKind::Regs)));
        if let (Ok(_), Err(f)) = (&result, put_back) {
            return Err(f);
        }
    }
    result
}

fn run_at_gadget(t: &mut Tracee, gadget: u64, nr: u64, args: [u64; 6]) -> Result<i64, Fail> {
    let mut regs = ptrace::getregs(t.pid).map_err(on(ErrorKind::Regs))?;
    regs.rip = gadget;
    regs.rax = nr;
    regs.orig_rax = u64::MAX;
    regs.rdi = args[0];
    regs.rsi = args[1];
    regs.rdx = args[2];
    regs.r10 = args[3];
    regs.r8 = args[4];
    regs.r9 = args[5];
    ptrace::setregs(t.pid, regs).map_err(on(ErrorKind::Regs))?;
    t.injected = t.injected.saturating_add(1);
    // Two syscall stops (entry, exit); a call that creates a task reports
    // it with a `PTRACE_EVENT_CLONE/FORK/VFORK` stop in between.
    let mut syscall_stops = 0;
    let mut events = 0;
    while syscall_stops < 2 {
        ptrace::syscall(t.pid, None).map_err(on(ErrorKind::Syscall))?;
        match wait(t.pid, ErrorKind::Syscall)? {
            Stop::Syscall => syscall_stops += 1,
            Stop::Signal(sig) => {
                t.last_stop = LastStop::Interrupt;
                t.pending_signal = Some(sig);
                return Err(Fail::new(ErrorKind::UnexpectedStop, sig));
            }
            Stop::Exec => return Err(let_go(t.pid)),
            Stop::OtherEvent(ev)
                if events < 16
                    && [PTRACE_EVENT_FORK, PTRACE_EVENT_VFORK, PTRACE_EVENT_CLONE]
                        .contains(&ev) =>
            {
                events += 1;
                let child = new_task_stop(t.pid)?;
                t.new_tasks.push(child);
            }
            // A task seized while in group-stop (state T) re-traps once
            // with PTRACE_EVENT_STOP when first resumed (ptrace(2),
            // "group-stop"), before it runs the instruction: resume again.
            Stop::Event if syscall_stops == 0 && events < 16 => events += 1,
            Stop::Event | Stop::OtherEvent(_) => {
                t.last_stop = LastStop::Interrupt;
                return Err(Fail::bare(ErrorKind::UnexpectedStop));
            }
            Stop::Exited(_) | Stop::Killed(_) => return Err(Fail::bare(ErrorKind::Gone)),
        }
    }
    t.last_stop = LastStop::SyscallExit;
    let regs = ptrace::getregs(t.pid).map_err(on(ErrorKind::Regs))?;
    Ok(regs.rax as i64)
}

const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;
const NR_RESTART_SYSCALL: u64 = 219;

/// The registers to put back into a target on release. From a syscall-exit
/// stop the kernel runs no restart logic, so a call interrupted by the seize
/// is restarted here (as arch/x86/kernel/signal.c does for a task that gets
/// no handler); from an interrupt stop the kernel does it, so the saved
/// registers go back unchanged.
pub fn restart_fixup(saved: &UserRegs, last: LastStop) -> UserRegs {
    let mut r = *saved;
    if last == LastStop::SyscallExit && (r.orig_rax as i64) >= 0 {
        match r.rax as i64 {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                r.rax = r.orig_rax;
                r.rip = r.rip.wrapping_sub(2);
            }
            ERESTART_RESTARTBLOCK => {
                r.rax = NR_RESTART_SYSCALL;
                r.rip = r.rip.wrapping_sub(2);
            }
            _ => {}
        }
    }
    r
}

/// Stop tracing `t` as `how` says (see `Request::Release`). For a target the
/// seize-time signal mask and registers go back first; a stub keeps what the
/// frontend gave it.
pub fn release(t: &Tracee, how: ReleaseMode) -> Result<(), Fail> {
    // Best effort: a failure to restore state is reported, but the task is
    // still detached (or killed) so that it is never left stopped.
    let mut restored = Ok(());
    if t.kind == Kind::Target && how != ReleaseMode::Kill {
        let regs = regs_from_wire(&restart_fixup(&regs_to_wire(&t.saved_regs), t.last_stop));
        restored = sys::set_sigmask(t.pid, t.saved_sigmask)
            .map_err(on(ErrorKind::Sigmask))
            .and(ptrace::setregs(t.pid, regs).map_err(on(ErrorKind::Regs)));
    }
    let rel = on(ErrorKind::Release);
    let released = match how {
        ReleaseMode::Resume | ReleaseMode::Stop => {
            let stop = if how == ReleaseMode::Stop {
                sys::pidfd_send_signal(t.pidfd.as_fd(), libc::SIGSTOP).map_err(&rel)
            } else {
                Ok(())
            };
            let detached = ptrace::detach(t.pid, None).map_err(&rel);
            let resent = match t.pending_signal {
                Some(sig) => sys::pidfd_send_signal(t.pidfd.as_fd(), sig).map_err(&rel),
                None => Ok(()),
            };
            stop.and(detached).and(resent)
        }
        // A killed target is not waited for: its memory is freed by the
        // kernel after `SIGKILL`, which takes 0.1-0.3 s per GiB, and the
        // dump need not pay for it. Once the signal is queued the whole
        // thread group is bound to die: `SIGKILL` cannot be blocked or
        // caught (signal(7)) and a tracer cannot suppress it (ptrace(2),
        // "Signal-delivery-stop"). It stays our tracee until this helper exits, when
        // the kernel detaches it (ptrace(2): "If the tracer dies, all
        // tracees are automatically detached"); it is not our child, so
        // its zombie is its parent's to reap, never ours. A stub is our
        // child: it is waited for (reaped) so its PID is free again.
        ReleaseMode::Kill => match t.kind {
            Kind::Target => send_kill(t),
            Kind::Stub => kill_and_wait(t),
        },
    };
    restored.and(released)
}

/// `SIGKILL` through the pidfd, then wait until the task is dead (this
/// consumes the tracer's notification and, for our children, reaps them so
/// their PID is free again). A thread group leader is reported only once
/// its other threads are gone: the caller kills and waits for those first.
pub fn kill_and_wait(t: &Tracee) -> Result<(), Fail> {
    send_kill(t)?;
    wait_dead(t)
}

/// `SIGKILL` through the pidfd; a task already dying (`ESRCH`) is fine.
pub fn send_kill(t: &Tracee) -> Result<(), Fail> {
    match sys::pidfd_send_signal(t.pidfd.as_fd(), libc::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(on(ErrorKind::Release)(e)),
    }
}

/// Wait until a killed task is dead.
pub fn wait_dead(t: &Tracee) -> Result<(), Fail> {
    for _ in 0..64 {
        match wait(t.pid, ErrorKind::Wait)? {
            Stop::Exited(_) | Stop::Killed(_) => return Ok(()),
            _ => continue,
        }
    }
    Err(Fail::bare(ErrorKind::Wait))
}

macro_rules! regs_conv {
    ($($f:ident),*) => {
        /// Kernel `user_regs_struct` to its wire form.
        pub fn regs_to_wire(r: &libc::user_regs_struct) -> UserRegs {
            UserRegs { $($f: r.$f),* }
        }
        /// Wire form to kernel `user_regs_struct`.
        pub fn regs_from_wire(r: &UserRegs) -> libc::user_regs_struct {
            libc::user_regs_struct { $($f: r.$f),* }
        }
    };
}

regs_conv!(
    r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs,
    eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs
);

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(orig_rax: u64, rax: i64) -> UserRegs {
        UserRegs {
            orig_rax,
            rax: rax as u64,
            rip: 0x1002,
            ..Default::default()
        }
    }

    #[test]
    fn restart_after_syscall_exit() {
        for code in [ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND] {
            let r = restart_fixup(&regs(7, code), LastStop::SyscallExit);
            assert_eq!((r.rax, r.rip), (7, 0x1000));
        }
        let r = restart_fixup(&regs(230, ERESTART_RESTARTBLOCK), LastStop::SyscallExit);
        assert_eq!((r.rax, r.rip), (219, 0x1000));
    }

    #[test]
    fn no_restart_when_kernel_does_it_or_not_in_a_syscall() {
        let saved = regs(7, ERESTARTSYS);
        assert_eq!(restart_fixup(&saved, LastStop::Interrupt), saved);
        let user = regs(u64::MAX, ERESTARTSYS);
        assert_eq!(restart_fixup(&user, LastStop::SyscallExit), user);
        let done = regs(7, -4);
        assert_eq!(restart_fixup(&done, LastStop::SyscallExit), done);
    }

    #[test]
    fn wait_status_decoding() {
        assert_eq!(classify(3 << 8), Stop::Exited(3));
        assert_eq!(classify(9), Stop::Killed(9));
        assert_eq!(
            classify(((libc::SIGTRAP | 0x80) << 8) | 0x7f),
            Stop::Syscall
        );
        assert_eq!(
            classify((PTRACE_EVENT_STOP << 16) | (libc::SIGTRAP << 8) | 0x7f),
            Stop::Event
        );
        assert_eq!(classify((40 << 8) | 0x7f), Stop::Signal(40));
    }

    #[test]
    fn regs_round_trip() {
        let w = UserRegs {
            r15: 1,
            rip: 2,
            gs: 3,
            orig_rax: 4,
            ..Default::default()
        };
        assert_eq!(regs_to_wire(&regs_from_wire(&w)), w);
    }
}
