//! Per-task state from `core-PID.img`, restored by injected calls (signal
//! actions, timers, limits, session, credentials, rseq, pending signals),
//! and the final registers with the system-call restart fix-up.

use crate::error::{Error, Result};
use crate::helper::Helper;
use crate::images::types::{CoreEntry, Creds, ITimer, PosixTimer, SigAction, SigAltStack};
use crate::remote::{errno_of, Batch, Remote};
use crate::{debug, info, warn};
use shared_ipc::UserRegs;

/// `-ERESTARTSYS`, `-ERESTARTNOINTR`, `-ERESTARTNOHAND`.
const RESTART_PLAIN: [i64; 3] = [-512, -513, -514];
/// `-ERESTART_RESTARTBLOCK`.
const RESTART_BLOCK: i64 = -516;
/// `PR_TIMER_CREATE_RESTORE_IDS` (Linux 6.15+).
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
/// `SIGEV_THREAD_ID`.
const SIGEV_THREAD_ID: i32 = 4;
/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_V3: u32 = 0x2008_0522;

fn words(w: &[u64]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Kernel `struct sigaction` for rt_sigaction(2): handler, flags, restorer, mask.
pub fn encode_sigaction(a: &SigAction) -> Vec<u8> {
    words(&[a.handler, a.flags, a.restorer, a.mask])
}

/// `struct itimerval` (interval then value, each `timeval`).
pub fn encode_itimerval(t: &ITimer) -> Vec<u8> {
    words(&[
        t.interval_us / 1_000_000,
        t.interval_us % 1_000_000,
        t.value_us / 1_000_000,
        t.value_us % 1_000_000,
    ])
}

/// The interval timer to set for a dumped one. An interval timer that had
/// just fired shows value 0 (the kernel re-arms `ITIMER_REAL` only when the
/// task dequeues its SIGALRM, which is then pending and restored from the
/// image); setting value 0 would disarm it, so it is armed one interval
/// ahead instead.
pub fn itimer_to_set(t: &ITimer) -> ITimer {
    if t.value_us == 0 && t.interval_us != 0 {
        ITimer {
            interval_us: t.interval_us,
            value_us: t.interval_us,
        }
    } else {
        *t
    }
}

/// `struct itimerspec` (interval then value, each `timespec`).
pub fn encode_itimerspec(interval_ns: u64, value_ns: u64) -> Vec<u8> {
    const NS: u64 = 1_000_000_000;
    words(&[
        interval_ns / NS,
        interval_ns % NS,
        value_ns / NS,
        value_ns % NS,
    ])
}

/// Kernel `struct sigevent`, 64 bytes: value, signo, notify, thread id.
pub fn encode_sigevent(t: &PosixTimer, pid: i32) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[0..8].copy_from_slice(&t.sigval.to_le_bytes());
    b[8..12].copy_from_slice(&t.signo.to_le_bytes());
    b[12..16].copy_from_slice(&t.notify.to_le_bytes());
    if t.notify & SIGEV_THREAD_ID != 0 {
        b[16..20].copy_from_slice(&pid.to_le_bytes());
    }
    b
}

/// `stack_t`: sp, flags (int, padded), size.
pub fn encode_stack(s: &SigAltStack) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&s.sp.to_le_bytes());
    b.extend_from_slice(&s.flags.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&s.size.to_le_bytes());
    b
}

/// capset(2) v3 header and the two data halves (effective, permitted,
/// inheritable per 32-bit half).
pub fn encode_capset(c: &Creds) -> (Vec<u8>, Vec<u8>) {
    let mut hdr = CAP_V3.to_le_bytes().to_vec();
    hdr.extend_from_slice(&0i32.to_le_bytes());
    let mut data = Vec::with_capacity(24);
    for shift in [0, 32] {
        for set in [c.cap_eff, c.cap_prm, c.cap_inh] {
            data.extend_from_slice(&((set >> shift) as u32).to_le_bytes());
        }
    }
    (hdr, data)
}

/// The registers to resume with: a call interrupted by the freeze is set to
/// run again from its `syscall` instruction; `orig_rax` is -1 so the kernel
/// adds no restart logic of its own.
pub fn final_regs(mut regs: UserRegs) -> UserRegs {
    let nr = regs.orig_rax as i64;
    let ret = regs.rax as i64;
    if nr >= 0 && (RESTART_PLAIN.contains(&ret) || ret == RESTART_BLOCK) {
        regs.rax = regs.orig_rax;
        regs.rip -= 2;
        if ret == RESTART_BLOCK {
            // The restart block is lost with the old task; sleep only what
            // was left, which the kernel wrote to the remaining-time buffer.
            if nr == libc::SYS_nanosleep && regs.rsi != 0 {
                regs.rdi = regs.rsi;
            } else if nr == libc::SYS_clock_nanosleep && regs.rsi & 1 == 0 && regs.r10 != 0 {
                regs.rdx = regs.r10;
            }
        }
    }
    regs.orig_rax = u64::MAX;
    regs
}

/// Restore everything `core-PID.img` holds but registers and the mask.
///
/// Errors: an injected call failed.
pub fn restore_state(h: &mut Helper, r: &Remote, core: &CoreEntry) -> Result<()> {
    // Calls that need no answer before the next one go in batches.
    let mut b = Batch::new(r);
    restore_sigactions(&mut b, r, &core.sigactions)?;
    for (which, t) in core.itimers.iter().map(itimer_to_set).enumerate() {
        debug!(
            "pid {}: itimer {which}: value {} us, interval {} us",
            r.pid, t.value_us, t.interval_us
        );
        let a = b.put(0, &encode_itimerval(&t))?;
        b.call(
            format!("setitimer({which})"),
            libc::SYS_setitimer,
            [which as u64, a, 0, 0, 0, 0],
        );
    }
    if !core.posix_timers.is_empty() {
        b.run(h)?;
        restore_posix_timers(h, r, &core.posix_timers)?;
    }
    restore_rlimits(h, &mut b, r, core)?;
    restore_task_common(h, &mut b, r, core)?;
    for p in &core.pending {
        let signo =
            u32::from_le_bytes([p.siginfo[0], p.siginfo[1], p.siginfo[2], p.siginfo[3]]) as u64;
        let a = b.put(0, &p.siginfo)?;
        let pid = r.pid as u64;
        if p.shared {
            b.call(
                format!("rt_sigqueueinfo({signo})"),
                libc::SYS_rt_sigqueueinfo,
                [pid, signo, a, 0, 0, 0],
            );
        } else {
            b.call(
                format!("rt_tgsigqueueinfo({signo})"),
                libc::SYS_rt_tgsigqueueinfo,
                [pid, pid, signo, a, 0, 0],
            );
        }
    }
    b.run(h)?;
    info!(
        "pid {}: signal actions, timers, limits, session, credentials and {} pending signals restored",
        r.pid,
        core.pending.len()
    );
    Ok(())
}

/// What every task, leader or extra thread, gets back by calls injected in
/// itself: execution domain, name, sigaltstack, robust list,
/// `clear_child_tid`, credentials, parent-death signal (after the
/// credentials, whose change clears it), no_new_privs and rseq. The calls
/// are added to `b`; a credentials change runs it first.
///
/// Errors: an injected call failed.
fn restore_task_common(h: &mut Helper, b: &mut Batch, r: &Remote, core: &CoreEntry) -> Result<()> {
    b.call(
        "personality",
        libc::SYS_personality,
        [core.personality as u64, 0, 0, 0, 0, 0],
    );
    let comm: String = core.comm.chars().take(15).collect();
    let mut name = comm.as_bytes()[..comm.len().min(15)].to_vec();
    name.push(0);
    let a = b.put(0, &name)?;
    b.call(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        [libc::PR_SET_NAME as u64, a, 0, 0, 0, 0],
    );
    let ss = if core.sigaltstack.flags & libc::SS_DISABLE != 0 {
        SigAltStack {
            sp: 0,
            flags: libc::SS_DISABLE,
            size: 0,
        }
    } else {
        core.sigaltstack
    };
    let a = b.put(0, &encode_stack(&ss))?;
    b.call("sigaltstack", libc::SYS_sigaltstack, [a, 0, 0, 0, 0, 0]);
    let (head, len) = core.robust_list;
    if head != 0 {
        b.call(
            "set_robust_list",
            libc::SYS_set_robust_list,
            [head, len, 0, 0, 0, 0],
        );
    }
    b.call(
        "set_tid_address",
        libc::SYS_set_tid_address,
        [core.clear_child_tid, 0, 0, 0, 0, 0],
    );
    restore_creds(h, b, r, &core.creds)?;
    // Credentials changes clear the parent-death signal: set it after.
    b.call(
        "prctl(PR_SET_PDEATHSIG)",
        libc::SYS_prctl,
        [
            libc::PR_SET_PDEATHSIG as u64,
            core.pdeath_sig as u64,
            0,
            0,
            0,
            0,
        ],
    );
    if core.creds.no_new_privs {
        b.call(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
        );
    }
    if let Some(rs) = core.rseq {
        b.call(
            format!("rseq({:#x})", rs.ptr),
            libc::SYS_rseq,
            [rs.ptr, rs.len as u64, 0, rs.sig as u64, 0, 0],
        );
    }
    Ok(())
}

/// Restore what belongs to one extra thread (`r.pid` is its tid, in
/// process `tgid`), by calls injected in that thread: execution domain,
/// name, sigaltstack, robust list, `clear_child_tid`, credentials,
/// parent-death signal, no_new_privs, rseq and its private pending signals.
///
/// Errors: an injected call failed.
pub fn restore_thread_state(h: &mut Helper, r: &Remote, core: &CoreEntry, tgid: i32) -> Result<()> {
    let mut b = Batch::new(r);
    restore_task_common(h, &mut b, r, core)?;
    b.run(h)?;
    for p in core.pending.iter().filter(|p| !p.shared) {
        let signo =
            u32::from_le_bytes([p.siginfo[0], p.siginfo[1], p.siginfo[2], p.siginfo[3]]) as u64;
        let a = r.put(h, 0, &p.siginfo)?;
        let ret = r.raw(
            h,
            libc::SYS_rt_tgsigqueueinfo,
            [tgid as u64, r.pid as u64, signo, a, 0, 0],
        )?;
        if let Some(e) = errno_of(ret) {
            warn!(
                "tid {}: re-queueing pending signal {signo} failed: {e}; it is lost",
                r.pid
            );
        }
    }
    info!("tid {} of pid {tgid}: thread state restored", r.pid);
    Ok(())
}

/// Every signal but SIGKILL and SIGSTOP gets the dumped action, or the
/// default when the image has none (the stub inherited the helper's), in
/// batch `b`.
fn restore_sigactions(b: &mut Batch, r: &Remote, acts: &[SigAction]) -> Result<()> {
    // A signal the stub neither catches nor ignores (no SigCgt/SigIgn bit,
    // proc(5)) is at its default, as the helper reset it: only the
    // non-default actions of the image need setting there.
    let st = crate::proc::read_status(r.pid)?;
    for sig in 1..=64u32 {
        if sig == libc::SIGKILL as u32 || sig == libc::SIGSTOP as u32 {
            continue;
        }
        let dfl = SigAction {
            sig,
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        let a = acts.iter().find(|a| a.sig == sig).unwrap_or(&dfl);
        let stub_default = (st.sig_cgt | st.sig_ign) & (1u64 << (sig - 1)) == 0;
        if stub_default && *a == dfl {
            continue;
        }
        let addr = b.put(0, &encode_sigaction(a))?;
        b.call(
            format!("rt_sigaction({sig})"),
            libc::SYS_rt_sigaction,
            [sig as u64, addr, 0, 8, 0, 0],
        );
    }
    Ok(())
}

fn restore_posix_timers(h: &mut Helper, r: &Remote, timers: &[PosixTimer]) -> Result<()> {
    if timers.is_empty() {
        return Ok(());
    }
    let mut sorted = timers.to_vec();
    sorted.sort_by_key(|t| t.id);
    let on = r.raw(
        h,
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
    )?;
    let exact = errno_of(on).is_none();
    if !exact {
        debug!(
            "pid {}: PR_TIMER_CREATE_RESTORE_IDS unavailable; creating timers until the ids match",
            r.pid
        );
    }
    let mut spare = Vec::new();
    for t in &sorted {
        let sev = r.put(h, 0, &encode_sigevent(t, r.pid))?;
        let idp = r.put(h, 64, &t.id.to_le_bytes())?;
        let create = |h: &mut Helper| -> Result<i32> {
            r.call(
                h,
                &format!("timer_create({})", t.id),
                libc::SYS_timer_create,
                [t.clock as i64 as u64, sev, idp, 0, 0, 0],
            )?;
            let b = r.get(h, 64, 4)?;
            Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let mut got = create(h)?;
        if !exact {
            let mut tries = 0;
            while got < t.id && tries < 1 << 16 {
                spare.push(got);
                got = create(h)?;
                tries += 1;
            }
        }
        if got != t.id {
            return Err(Error::Unsupported(format!(
                "pid {}: POSIX timer {} was created with id {got}",
                r.pid, t.id
            )));
        }
        // As for itimers: a periodic timer seen between expiry and re-arm
        // is armed one interval ahead.
        let value = if t.value_ns == 0 {
            t.interval_ns
        } else {
            t.value_ns
        };
        if value != 0 {
            let a = r.put(h, 128, &encode_itimerspec(t.interval_ns, value))?;
            r.call(
                h,
                &format!("timer_settime({})", t.id),
                libc::SYS_timer_settime,
                [t.id as u64, 0, a, 0, 0, 0],
            )?;
        }
    }
    for id in spare {
        r.call(
            h,
            &format!("timer_delete({id})"),
            libc::SYS_timer_delete,
            [id as u64, 0, 0, 0, 0, 0],
        )?;
    }
    if exact {
        r.call(
            h,
            "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)",
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// Clamp a dumped limit to the hard limit we can set (raising it needs
/// CAP_SYS_RESOURCE); returns the limit and whether it was clamped.
pub fn clamp_rlimit(cur: u64, max: u64, hard_now: u64) -> (u64, u64, bool) {
    if max <= hard_now {
        (cur, max, false)
    } else {
        (cur.min(hard_now), hard_now, true)
    }
}

/// The limits that differ from the stub's, set in batch `b` (which runs
/// first when a limit can only be read by an injected call).
fn restore_rlimits(h: &mut Helper, b: &mut Batch, r: &Remote, core: &CoreEntry) -> Result<()> {
    for l in &core.rlimits {
        let res = l.resource as u64;
        // Read by criu when it may (no injected call); the stub's limits
        // are usually the dumped ones already, and then nothing is set.
        let (cur_now, hard_now) = match crate::sys::get_rlimit(r.pid, l.resource) {
            Ok(v) => v,
            Err(_) => {
                b.run(h)?;
                let old = r.put(h, 16, &[0; 16])?;
                r.call(
                    h,
                    &format!("prlimit64(get {res})"),
                    libc::SYS_prlimit64,
                    [0, res, 0, old, 0, 0],
                )?;
                let b = r.get(h, 16, 16)?;
                let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0xff; 8]));
                (w(0), w(8))
            }
        };
        if (cur_now, hard_now) == (l.cur, l.max) {
            continue;
        }
        let (cur, max, clamped) = clamp_rlimit(l.cur, l.max, hard_now);
        if clamped {
            warn!(
                "pid {}: rlimit {res}: dumped hard limit {} is above the current {hard_now}, which only CAP_SYS_RESOURCE may raise; keeping {hard_now}",
                r.pid, l.max
            );
        }
        let new = b.put(0, &words(&[cur, max]))?;
        b.call(
            format!("prlimit64(set {res})"),
            libc::SYS_prlimit64,
            [0, res, new, 0, 0, 0],
        );
    }
    Ok(())
}

/// Whether the dumped credentials are those of full root (what the stub
/// has), so nothing needs changing.
pub fn is_full_root(c: &Creds) -> bool {
    c.uids == [0; 4]
        && c.gids == [0; 4]
        && c.cap_eff == c.cap_prm
        && c.cap_amb == 0
        && c.securebits == 0
        && c.cap_prm == c.cap_bnd
}

/// Give the stub the dumped credentials. Nothing is done when it already
/// has them, which is always the case in setuid mode: the stub runs with the
/// caller's credentials and `validate` refused any image asking for others.
/// The calls queued in `b` run before any credentials change.
fn restore_creds(h: &mut Helper, b: &mut Batch, r: &Remote, c: &Creds) -> Result<()> {
    let st = crate::proc::read_status(r.pid)?;
    let same_but_bounding = st.uids == c.uids
        && st.gids == c.gids
        && st.groups == c.groups
        && st.cap_inh == c.cap_inh
        && st.cap_prm == c.cap_prm
        && st.cap_eff == c.cap_eff
        && st.cap_amb == c.cap_amb;
    let setuid_mode = h.caller_uid != 0;
    if same_but_bounding && st.cap_bnd != c.cap_bnd && setuid_mode {
        // Dropping from the bounding set needs CAP_SETPCAP, which the stub
        // of an unprivileged caller lacks; the caller's own bounding set is
        // what any program they start gets.
        warn!(
            "pid {}: cannot restore the bounding set {:#x} without privilege; it stays {:#x}",
            r.pid, c.cap_bnd, st.cap_bnd
        );
        return Ok(());
    }
    if (same_but_bounding && st.cap_bnd == c.cap_bnd) || (is_full_root(c) && c.groups == st.groups)
    {
        debug!("pid {}: credentials already as dumped", r.pid);
        return Ok(());
    }
    if setuid_mode {
        return Err(Error::Refused(format!(
            "pid {}: the image asks for uids {:?} gids {:?} groups {:?}; the stub has uids {:?} gids {:?} groups {:?} and cannot change them in setuid mode",
            r.pid, c.uids, c.gids, c.groups, st.uids, st.gids, st.groups
        )));
    }
    b.run(h)?;
    for cap in 0..64u64 {
        if st.cap_bnd & !c.cap_bnd & (1 << cap) != 0 {
            r.call(
                h,
                &format!("prctl(PR_CAPBSET_DROP, {cap})"),
                libc::SYS_prctl,
                [libc::PR_CAPBSET_DROP as u64, cap, 0, 0, 0, 0],
            )?;
        }
    }
    if c.securebits != 0 {
        r.call(
            h,
            "prctl(PR_SET_SECUREBITS)",
            libc::SYS_prctl,
            [
                libc::PR_SET_SECUREBITS as u64,
                c.securebits as u64,
                0,
                0,
                0,
                0,
            ],
        )?;
    }
    r.call(
        h,
        "prctl(PR_SET_KEEPCAPS, 1)",
        libc::SYS_prctl,
        [libc::PR_SET_KEEPCAPS as u64, 1, 0, 0, 0, 0],
    )?;
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    let ga = if groups.is_empty() {
        0
    } else {
        r.put(h, 0, &groups)?
    };
    r.call(
        h,
        "setgroups",
        libc::SYS_setgroups,
        [c.groups.len() as u64, ga, 0, 0, 0, 0],
    )?;
    let [rg, eg, sg, fg] = c.gids.map(u64::from);
    let [ru, eu, su, fu] = c.uids.map(u64::from);
    r.call(h, "setresgid", libc::SYS_setresgid, [rg, eg, sg, 0, 0, 0])?;
    r.call(h, "setresuid", libc::SYS_setresuid, [ru, eu, su, 0, 0, 0])?;
    r.raw(h, libc::SYS_setfsgid, [fg, 0, 0, 0, 0, 0])?;
    r.raw(h, libc::SYS_setfsuid, [fu, 0, 0, 0, 0, 0])?;
    let (hdr, data) = encode_capset(c);
    let ha = r.put(h, 0, &hdr)?;
    let da = r.put(h, 64, &data)?;
    r.call(h, "capset", libc::SYS_capset, [ha, da, 0, 0, 0, 0])?;
    for cap in 0..64u64 {
        if c.cap_amb & (1 << cap) != 0 {
            r.call(
                h,
                &format!("prctl(PR_CAP_AMBIENT_RAISE, {cap})"),
                libc::SYS_prctl,
                [
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                    0,
                    0,
                    0,
                ],
            )?;
        }
    }
    const SECBIT_KEEP_CAPS: u32 = 1 << 4;
    if c.securebits & SECBIT_KEEP_CAPS == 0 {
        r.call(
            h,
            "prctl(PR_SET_KEEPCAPS, 0)",
            libc::SYS_prctl,
            [libc::PR_SET_KEEPCAPS as u64, 0, 0, 0, 0, 0],
        )?;
    }
    info!(
        "pid {}: credentials set to uid {:?} gid {:?}",
        r.pid, c.uids, c.gids
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(orig: u64, rax: i64, rip: u64) -> UserRegs {
        UserRegs {
            orig_rax: orig,
            rax: rax as u64,
            rip,
            ..Default::default()
        }
    }

    #[test]
    fn restart_plain() {
        for code in [-512, -513, -514] {
            let r = final_regs(regs(7, code, 0x1002));
            assert_eq!((r.rax, r.rip, r.orig_rax), (7, 0x1000, u64::MAX));
        }
    }

    #[test]
    fn no_restart() {
        let r = final_regs(regs(7, -4, 0x1002));
        assert_eq!((r.rax, r.rip, r.orig_rax), (-4i64 as u64, 0x1002, u64::MAX));
        let r = final_regs(regs(u64::MAX, -512, 0x1002));
        assert_eq!((r.rax, r.rip), (-512i64 as u64, 0x1002));
    }

    #[test]
    fn restart_block_sleeps_the_rest() {
        let mut g = regs(libc::SYS_nanosleep as u64, -516, 0x2002);
        g.rdi = 0x100;
        g.rsi = 0x200;
        let r = final_regs(g);
        assert_eq!(
            (r.rax, r.rip, r.rdi),
            (libc::SYS_nanosleep as u64, 0x2000, 0x200)
        );
        // clock_nanosleep, relative: request <- remaining.
        let mut g = regs(libc::SYS_clock_nanosleep as u64, -516, 0x2002);
        g.rsi = 0;
        g.rdx = 0x100;
        g.r10 = 0x300;
        assert_eq!(final_regs(g).rdx, 0x300);
        // Absolute: unchanged.
        g.rsi = 1;
        assert_eq!(final_regs(g).rdx, 0x100);
        // No remaining buffer: the whole sleep again.
        let mut g = regs(libc::SYS_nanosleep as u64, -516, 0x2002);
        g.rdi = 0x100;
        assert_eq!(final_regs(g).rdi, 0x100);
        // poll: re-issued as it was.
        let r = final_regs(regs(7, -516, 0x2002));
        assert_eq!((r.rax, r.rip), (7, 0x2000));
    }

    #[test]
    fn struct_layouts() {
        let a = SigAction {
            sig: 2,
            handler: 1,
            flags: 2,
            restorer: 3,
            mask: 4,
        };
        assert_eq!(encode_sigaction(&a), words(&[1, 2, 3, 4]));
        let t = ITimer {
            interval_us: 1_500_000,
            value_us: 250,
        };
        assert_eq!(encode_itimerval(&t), words(&[1, 500_000, 0, 250]));
        assert_eq!(encode_itimerspec(2_000_000_001, 5), words(&[2, 1, 0, 5]));
        let pt = PosixTimer {
            id: 3,
            clock: 1,
            notify: SIGEV_THREAD_ID,
            notify_tid: 99,
            signo: 14,
            sigval: 0xabcd,
            interval_ns: 0,
            value_ns: 0,
        };
        let s = encode_sigevent(&pt, 42);
        assert_eq!(s.len(), 64);
        assert_eq!(&s[0..8], &0xabcdu64.to_le_bytes());
        assert_eq!(&s[8..12], &14i32.to_le_bytes());
        assert_eq!(&s[12..16], &4i32.to_le_bytes());
        assert_eq!(&s[16..20], &42i32.to_le_bytes());
        let st = encode_stack(&SigAltStack {
            sp: 0x1000,
            flags: 0,
            size: 8192,
        });
        assert_eq!(st.len(), 24);
        assert_eq!(&st[16..24], &8192u64.to_le_bytes());
        let c = Creds {
            cap_eff: 1 << 33 | 1,
            cap_prm: 3,
            cap_inh: 1 << 40,
            ..Default::default()
        };
        let (hdr, data) = encode_capset(&c);
        assert_eq!(hdr.len(), 8);
        assert_eq!(data.len(), 24);
        assert_eq!(&data[0..4], &1u32.to_le_bytes());
        assert_eq!(&data[4..8], &3u32.to_le_bytes());
        assert_eq!(&data[12..16], &2u32.to_le_bytes());
        assert_eq!(&data[20..24], &(1u32 << 8).to_le_bytes());
    }

    #[test]
    fn fired_interval_timer_is_rearmed() {
        let fired = ITimer {
            interval_us: 50_000,
            value_us: 0,
        };
        assert_eq!(itimer_to_set(&fired).value_us, 50_000);
        let off = ITimer::default();
        assert_eq!(itimer_to_set(&off), off);
        let armed = ITimer {
            interval_us: 50_000,
            value_us: 7,
        };
        assert_eq!(itimer_to_set(&armed), armed);
    }

    #[test]
    fn rlimit_clamp() {
        assert_eq!(clamp_rlimit(5, 10, 20), (5, 10, false));
        assert_eq!(clamp_rlimit(5, 30, 20), (5, 20, true));
        assert_eq!(clamp_rlimit(25, 30, 20), (20, 20, true));
    }
}
