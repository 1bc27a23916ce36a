//! Per-task state: registers, signals, timers, limits, credentials. What
//! /proc does not show is asked from the task itself with injected calls
//! whose results land in the scratch area.

use crate::error::{Error, Result};
use crate::helper::Helper;
use crate::images::types::{
    CoreEntry, Creds, ITimer, PendingSignal, PosixTimer, Rlimit, Rseq, SigAction, SigAltStack,
};
use crate::proc::{self, Status};
use crate::remote::Remote;
use shared_ipc::UserRegs;

/// Number of resource limits (`RLIM_NLIMITS`, see getrlimit(2)).
const RLIM_NLIMITS: u32 = 16;
/// `PR_GET_TID_ADDRESS` (see prctl(2)).
const PR_GET_TID_ADDRESS: u64 = 40;
/// `SIGEV_THREAD_ID` (see sigevent(3type)).
const SIGEV_THREAD_ID: i32 = 4;

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn i32_at(b: &[u8], off: usize) -> i32 {
    i32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// Collect what belongs to one thread (`r.pid` is its tid, in process
/// `tgid`): registers, mask, private pending signals, sigaltstack, rseq,
/// robust list, `clear_child_tid`, parent-death signal, credentials, name.
/// Injected calls run in that thread; process-wide fields stay empty.
///
/// Errors: helper failures, injected calls that fail, unreadable /proc files.
pub fn collect_thread(
    h: &mut Helper,
    r: &Remote,
    tgid: i32,
    regs: UserRegs,
    xstate: Vec<u8>,
    sigmask: u64,
) -> Result<CoreEntry> {
    let tid = r.pid;
    let tdir = |name: &str| proc::path(tgid, &format!("task/{tid}/{name}"));
    let comm = proc::read_text(&tdir("comm"))?
        .trim_end_matches('\n')
        .to_string();
    let spath = tdir("status");
    let status =
        proc::parse_status(&proc::read_text(&spath)?).map_err(|d| Error::parse(&spath, d))?;
    r.call(
        h,
        "sigaltstack",
        libc::SYS_sigaltstack,
        [0, r.scratch, 0, 0, 0, 0],
    )?;
    let b = r.get(h, 0, 24)?;
    let sigaltstack = SigAltStack {
        sp: u64_at(&b, 0),
        flags: i32_at(&b, 8),
        size: u64_at(&b, 16),
    };
    r.call(
        h,
        "prctl(PR_GET_TID_ADDRESS)",
        libc::SYS_prctl,
        [PR_GET_TID_ADDRESS, r.scratch, 0, 0, 0, 0],
    )?;
    let clear_child_tid = u64_at(&r.get(h, 0, 8)?, 0);
    r.call(
        h,
        "prctl(PR_GET_PDEATHSIG)",
        libc::SYS_prctl,
        [libc::PR_GET_PDEATHSIG as u64, r.scratch, 0, 0, 0, 0],
    )?;
    let pdeath_sig = i32_at(&r.get(h, 0, 4)?, 0);
    let securebits = r.call(
        h,
        "prctl(PR_GET_SECUREBITS)",
        libc::SYS_prctl,
        [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0],
    )? as u32;
    let ppath = tdir("personality");
    let ptext = proc::read_text(&ppath)?;
    let personality =
        u32::from_str_radix(ptext.trim(), 16).map_err(|e| Error::parse(&ppath, e.to_string()))?;
    let rc = h.get_rseq(tid)?;
    let rseq = (rc.rseq_abi_pointer != 0).then_some(Rseq {
        ptr: rc.rseq_abi_pointer,
        len: rc.rseq_abi_size,
        sig: rc.signature,
    });
    let robust_list = crate::sys::get_robust_list(tid)
        .map_err(|e| Error::proc(format!("get_robust_list(tid {tid})"), e))?;
    let pending = h
        .peek_siginfo(tid, false)?
        .into_iter()
        .map(|siginfo| PendingSignal {
            shared: false,
            siginfo,
        })
        .collect();
    Ok(CoreEntry {
        tid,
        comm,
        regs,
        xstate,
        sigmask,
        pending,
        sigactions: Vec::new(),
        itimers: [ITimer::default(); 3],
        posix_timers: Vec::new(),
        rlimits: Vec::new(),
        personality,
        rseq,
        sigaltstack,
        robust_list,
        clear_child_tid,
        pdeath_sig,
        stopped: false,
        creds: creds_of(&status, securebits),
        child_subreaper: false,
    })
}

fn creds_of(status: &Status, securebits: u32) -> Creds {
    Creds {
        uids: status.uids,
        gids: status.gids,
        groups: status.groups.clone(),
        cap_inh: status.cap_inh,
        cap_prm: status.cap_prm,
        cap_eff: status.cap_eff,
        cap_bnd: status.cap_bnd,
        cap_amb: status.cap_amb,
        securebits,
        no_new_privs: status.no_new_privs,
    }
}

/// Collect the core record of a seized process's leader: its thread part
/// ([`collect_thread`]) plus everything process-wide.
///
/// Errors: helper failures, injected calls that fail, unreadable /proc files.
pub fn collect(
    h: &mut Helper,
    r: &Remote,
    status: &Status,
    stopped: bool,
    regs: UserRegs,
    xstate: Vec<u8>,
    sigmask: u64,
) -> Result<CoreEntry> {
    let pid = r.pid;
    let mut core = collect_thread(h, r, pid, regs, xstate, sigmask)?;

    // Signal actions: rt_sigaction(sig, NULL, &old, 8) for each signal that
    // is caught or ignored (SigCgt/SigIgn of /proc/PID/status), and SIGCHLD,
    // whose SA_NOCLDWAIT/SA_NOCLDSTOP matter even with SIG_DFL. The others
    // are at their default and need no call.
    let mut sigactions = Vec::new();
    let non_default = status.sig_cgt | status.sig_ign | 1 << (libc::SIGCHLD - 1);
    for sig in 1..=64u32 {
        if sig == libc::SIGKILL as u32 || sig == libc::SIGSTOP as u32 {
            continue;
        }
        if non_default & (1 << (sig - 1)) == 0 {
            sigactions.push(SigAction {
                sig,
                handler: 0,
                flags: 0,
                restorer: 0,
                mask: 0,
            });
            continue;
        }
        r.call(
            h,
            &format!("rt_sigaction({sig})"),
            libc::SYS_rt_sigaction,
            [sig as u64, 0, r.scratch, 8, 0, 0],
        )?;
        let b = r.get(h, 0, 32)?;
        sigactions.push(SigAction {
            sig,
            handler: u64_at(&b, 0),
            flags: u64_at(&b, 8),
            restorer: u64_at(&b, 16),
            mask: u64_at(&b, 24),
        });
    }

    // Interval timers: getitimer(which, &old) -> struct itimerval.
    let mut itimers = [ITimer::default(); 3];
    for (which, t) in itimers.iter_mut().enumerate() {
        r.call(
            h,
            &format!("getitimer({which})"),
            libc::SYS_getitimer,
            [which as u64, r.scratch, 0, 0, 0, 0],
        )?;
        let b = r.get(h, 0, 32)?;
        t.interval_us = u64_at(&b, 0) * 1_000_000 + u64_at(&b, 8);
        t.value_us = u64_at(&b, 16) * 1_000_000 + u64_at(&b, 24);
    }

    // POSIX timers: identities from /proc, times from timer_gettime.
    let tpath = proc::path(pid, "timers");
    let infos =
        proc::parse_timers(&proc::read_text(&tpath)?).map_err(|d| Error::parse(&tpath, d))?;
    let mut posix_timers = Vec::new();
    for t in infos {
        r.call(
            h,
            &format!("timer_gettime({})", t.id),
            libc::SYS_timer_gettime,
            [t.id as u64, r.scratch, 0, 0, 0, 0],
        )?;
        let b = r.get(h, 0, 32)?;
        let notify = match t.notify.as_str() {
            "signal" => libc::SIGEV_SIGNAL,
            "thread" => SIGEV_THREAD_ID,
            "none" => libc::SIGEV_NONE,
            other => {
                return Err(Error::parse(
                    &tpath,
                    format!("timer {}: unknown notify kind {other:?}", t.id),
                ))
            }
        };
        posix_timers.push(PosixTimer {
            id: t.id,
            clock: t.clock,
            notify,
            notify_tid: if notify == SIGEV_THREAD_ID {
                t.notify_pid
            } else {
                0
            },
            signo: t.signo,
            sigval: t.sigval,
            interval_ns: u64_at(&b, 0) * 1_000_000_000 + u64_at(&b, 8),
            value_ns: u64_at(&b, 16) * 1_000_000_000 + u64_at(&b, 24),
        });
    }

    let mut rlimits = Vec::new();
    for res in 0..RLIM_NLIMITS {
        let (cur, max) = crate::sys::get_rlimit(pid, res)
            .map_err(|e| Error::proc(format!("prlimit(pid {pid}, resource {res})"), e))?;
        rlimits.push(Rlimit {
            resource: res,
            cur,
            max,
        });
    }

    for siginfo in h.peek_siginfo(pid, true)? {
        core.pending.push(PendingSignal {
            shared: true,
            siginfo,
        });
    }
    let subreaper = r
        .call(
            h,
            "prctl(PR_GET_CHILD_SUBREAPER)",
            libc::SYS_prctl,
            [libc::PR_GET_CHILD_SUBREAPER as u64, r.scratch, 0, 0, 0, 0],
        )
        .and_then(|_| r.get(h, 0, 4))?;
    core.sigactions = sigactions;
    core.itimers = itimers;
    core.posix_timers = posix_timers;
    core.rlimits = rlimits;
    core.stopped = stopped;
    core.child_subreaper = i32_at(&subreaper, 0) != 0;
    Ok(core)
}
