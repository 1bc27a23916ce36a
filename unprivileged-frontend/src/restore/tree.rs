//! Creating the processes and threads of a checkpoint with their dumped IDs:
//! child processes are forked (an injected fork-like `clone3` with `set_tid`)
//! from their parent's stub once the parent's memory is restored (so they
//! inherit its private pages copy-on-write, see `super::cow`) and before
//! its descriptors, threads and credentials are; sessions and process
//! groups are set up, zombies are made to exit with their dumped status;
//! extra threads are created (an injected `clone3` with `CLONE_THREAD`) in
//! a restored leader.

use super::validate::Checkpoint;
use crate::error::{Error, Result};
use crate::helper::{Helper, HelperError};
use crate::images::types::PstreeEntry;
use crate::remote::{Batch, Remote};
use crate::{debug, info};
use shared_ipc::{ErrorKind, ReleaseMode};

/// Flags of an extra thread, as pthread_create(3) uses them.
pub const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// Size of `struct clone_args` up to `set_tid_size` (`CLONE_ARGS_SIZE_VER1`).
const CLONE_ARGS_SIZE: usize = 80;

/// Kernel `struct clone_args` (clone3(2)) with `set_tid` pointing at `tid_addr`.
pub fn encode_clone_args(flags: u64, exit_signal: u64, tid_addr: u64) -> Vec<u8> {
    // flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
    // tls, set_tid, set_tid_size
    [flags, 0, 0, 0, exit_signal, 0, 0, 0, tid_addr, 1]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

/// Run `clone3` in `r` to create task `tid` (the helper traces it from its
/// first instruction); the scratch area holds the arguments.
///
/// Errors: the call failed (EEXIST: the ID is taken) or made another ID.
///
/// In setuid mode the stub runs with the caller's credentials and may not
/// use `set_tid` (it needs `CAP_CHECKPOINT_RESTORE`): the helper makes
/// `tid` the next PID the kernel hands out instead, and clone3 goes without
/// `set_tid`; if another process of the system forked in between and took
/// the PID, the restore fails (and can be retried).
pub fn clone_in(h: &mut Helper, r: &Remote, flags: u64, exit_signal: u64, tid: i32) -> Result<()> {
    if h.caller_uid != 0 {
        return clone_next_pid(h, r, flags, exit_signal, tid);
    }
    let tid_addr = r.put(h, 128, &tid.to_le_bytes())?;
    let args = r.put(h, 0, &encode_clone_args(flags, exit_signal, tid_addr))?;
    let what = format!("clone3(set_tid {tid})");
    let got = r.call(
        h,
        &what,
        libc::SYS_clone3,
        [args, CLONE_ARGS_SIZE as u64, 0, 0, 0, 0],
    )?;
    if got != tid as u64 {
        return Err(Error::Unsupported(format!(
            "pid {}: {what} made {got}",
            r.pid
        )));
    }
    debug!("pid {}: created {tid}", r.pid);
    Ok(())
}

/// [`clone_in`] for each of `tasks` (`(flags, exit_signal, tid)`), in
/// order, all made by `r`; in root mode in one batch of injected calls,
/// since none needs the answer of the one before. A taken ID is refused
/// naming its holder ([`in_use`]).
///
/// Errors: as [`clone_in`].
pub fn clone_all(h: &mut Helper, r: &Remote, tasks: &[(u64, u64, i32)]) -> Result<()> {
    if h.caller_uid != 0 || tasks.len() < 2 {
        for &(flags, exit_signal, tid) in tasks {
            clone_in(h, r, flags, exit_signal, tid).map_err(|e| in_use(e, tid))?;
        }
        return Ok(());
    }
    let what = |tid: i32| format!("clone3(set_tid {tid})");
    let mut b = Batch::new(r);
    for &(flags, exit_signal, tid) in tasks {
        let tid_addr = b.put(128, &tid.to_le_bytes())?;
        let args = b.put(0, &encode_clone_args(flags, exit_signal, tid_addr))?;
        b.call(
            what(tid),
            libc::SYS_clone3,
            [args, CLONE_ARGS_SIZE as u64, 0, 0, 0, 0],
        );
    }
    let got = b.run(h).map_err(|e| {
        let failed = match &e {
            Error::Injected { call, .. } => tasks.iter().find(|t| *call == what(t.2)),
            _ => None,
        };
        match failed {
            Some(t) => in_use(e, t.2),
            None => e,
        }
    })?;
    for (&(_, _, tid), made) in tasks.iter().zip(got) {
        if made != tid as u64 {
            return Err(Error::Unsupported(format!(
                "pid {}: {} made {made}",
                r.pid,
                what(tid)
            )));
        }
        debug!("pid {}: created {tid}", r.pid);
    }
    Ok(())
}

/// Tries of [`clone_next_pid`] before giving up, [`NEXT_PID_PAUSE`] apart:
/// forks elsewhere on a busy machine can take the PID between `SetNextPid`
/// and the clone several times in a row.
const NEXT_PID_TRIES: u32 = 32;
/// Pause between two tries of [`clone_next_pid`].
const NEXT_PID_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// The name of the task that holds `pid` now, if one does (a thread of
/// another process that took it keeps it until it exits).
fn taken_by(pid: i32) -> Option<String> {
    let st = crate::proc::read_status(pid).ok()?;
    Some(format!("{} (pid {})", st.name, st.tgid))
}

/// Setuid mode: `SetNextPid`, then `clone3` without `set_tid`. When another
/// process of the system took the PID in between, the task made with the
/// wrong PID is undone (a thread exits; a process is killed and reaped by
/// the stub, whose `SIGCHLD` is dropped) and it is tried again.
fn clone_next_pid(
    h: &mut Helper,
    r: &Remote,
    flags: u64,
    exit_signal: u64,
    tid: i32,
) -> Result<()> {
    let mut args = encode_clone_args(flags, exit_signal, 0);
    // No set_tid: set_tid_size = 0.
    args[72..80].copy_from_slice(&0u64.to_le_bytes());
    let args = r.put(h, 0, &args)?;
    let what = format!("clone3(next pid {tid})");
    // Where the kernel's allocation stood: put back after each clone, or
    // every other fork of the system would take the PIDs just above `tid`,
    // which the tree may still need.
    let before: Option<i32> = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|v| v.trim().parse().ok());
    for attempt in 1..=NEXT_PID_TRIES {
        h.set_next_pid(r.pid, tid)?;
        let got = r.call(
            h,
            &what,
            libc::SYS_clone3,
            [args, CLONE_ARGS_SIZE as u64, 0, 0, 0, 0],
        )?;
        if got == tid as u64 {
            debug!("pid {}: created {tid}", r.pid);
            if let Some(last) = before.filter(|&b| b > tid) {
                h.set_next_pid(r.pid, last + 1)?;
            }
            return Ok(());
        }
        info!(
            "pid {}: {what} made {got} (another process took {tid}), attempt {attempt}",
            r.pid
        );
        undo_clone(h, r, flags, got as i32)?;
        if let Some(who) = taken_by(tid) {
            return Err(Error::Refused(format!(
                "pid {}: pid {tid} was taken by {who} while the tree was being restored (without \
                 root a PID cannot be reserved, see SECURITY.md); restore again once it is free",
                r.pid
            )));
        }
        std::thread::sleep(NEXT_PID_PAUSE);
    }
    Err(Error::Refused(format!(
        "pid {}: other processes kept taking pid {tid} during the restore ({NEXT_PID_TRIES} \
         tries); try again",
        r.pid
    )))
}

/// Remove a task just made by an injected clone with the wrong PID.
fn undo_clone(h: &mut Helper, r: &Remote, flags: u64, got: i32) -> Result<()> {
    if flags & libc::CLONE_THREAD as u64 != 0 {
        // exit(2) of that thread only; it is gone at the call's exit.
        let tr = Remote { pid: got, ..*r };
        return match tr.raw(h, libc::SYS_exit, [0; 6]) {
            Err(Error::Helper(HelperError::Failed {
                kind: ErrorKind::Gone,
                ..
            })) => Ok(()),
            Ok(ret) => Err(Error::Unsupported(format!(
                "pid {got}: exit returned {ret}"
            ))),
            Err(e) => Err(e),
        };
    }
    h.release(got, ReleaseMode::Kill)?;
    r.call(
        h,
        &format!("wait4({got})"),
        libc::SYS_wait4,
        [got as u64, 0, libc::__WALL as u64, 0, 0, 0],
    )?;
    // rt_sigtimedwait({SIGCHLD}, NULL, {0, 0}): drop its SIGCHLD.
    let set = r.put(h, 256, &(1u64 << (libc::SIGCHLD - 1)).to_le_bytes())?;
    let ts = r.put(h, 272, &[0u8; 16])?;
    r.raw(h, libc::SYS_rt_sigtimedwait, [set, 0, ts, 8, 0, 0])?;
    Ok(())
}

/// A one-page scratch area, anywhere free, in a stub that is about to
/// become a zombie.
fn boot_scratch(h: &mut Helper, pid: i32) -> Result<Remote> {
    let mut r = Remote::new(pid);
    r.scratch = r.call(
        h,
        "mmap(boot scratch)",
        libc::SYS_mmap,
        [
            0,
            4096,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    )?;
    r.scratch_len = 4096;
    Ok(r)
}

fn entry(ck: &Checkpoint, pid: i32) -> Option<&PstreeEntry> {
    ck.tree.iter().find(|e| e.pid == pid)
}

/// Before a process's children are forked: block every signal in it (a
/// zombie's `SIGCHLD` waits in its parent, which drops it before its own
/// pending signals are re-queued) and make it a session leader if it was
/// one.
///
/// Errors: an injected call failed.
pub fn start_session(h: &mut Helper, ck: &Checkpoint, e: &PstreeEntry) -> Result<()> {
    let root = ck.tree[0].pid;
    h.set_sigmask(e.pid, !0)?;
    let r = Remote::new(e.pid);
    if e.sid == e.pid {
        r.call(h, "setsid", libc::SYS_setsid, [0; 6])?;
    } else if e.pid == root {
        info!(
            "pid {root}: was in session {} (not in the checkpoint); it joins criu's session",
            e.sid
        );
    }
    Ok(())
}

/// Whether restore can rebuild the sessions and process groups of `tree`
/// (root first, parents before children): a process in a session it does
/// not lead must get it from its parent (or be a child of a root that is
/// outside its own session); a process in a group it does not lead must
/// find the leader in the tree or get the group from its parent. Dump runs
/// this before it kills anything, restore before it creates anything.
///
/// Errors: [`Error::Unsupported`] naming the process, its session or group,
/// and that it cannot be rebuilt.
pub fn check_rebuildable(tree: &[PstreeEntry]) -> Result<()> {
    if tree.is_empty() {
        return Ok(());
    }
    let find = |pid: i32| tree.iter().find(|e| e.pid == pid);
    // Leaderless sessions rebuilt by a session holder: by whose children.
    let mut holders: Vec<(i32, i32)> = Vec::new();
    for c in &tree[1..] {
        let Some(p) = find(c.ppid) else { continue };
        if in_leaderless_session(tree, p, c) {
            if find(c.sid).is_some() {
                return Err(Error::Unsupported(format!(
                    "pid {}: its session {} is led by a process of the tree that is not its parent's session; such sessions cannot be rebuilt at restore",
                    c.pid, c.sid
                )));
            }
            match holders.iter().find(|h| h.0 == c.sid) {
                Some(&(_, other)) if other != p.pid => {
                    return Err(Error::Unsupported(format!(
                        "pid {}: its session {} (whose leader exited) also holds children of {other}, not only of {}; such sessions cannot be rebuilt at restore",
                        c.pid, c.sid, p.pid
                    )))
                }
                Some(_) => {}
                None => holders.push((c.sid, p.pid)),
            }
        }
    }
    for c in &tree[1..] {
        let Some(p) = find(c.ppid) else { continue };
        // A child forked by a session holder starts in group `sid`.
        let from_holder = in_leaderless_session(tree, p, c) && c.pgid == c.sid;
        if c.pgid != c.pid && find(c.pgid).is_none() && p.pgid != c.pgid && !from_holder {
            return Err(Error::Unsupported(format!(
                "pid {}: its process group {} has no leader in the tree and is not its parent's ({}); such groups cannot be rebuilt at restore",
                c.pid, c.pgid, p.pid
            )));
        }
    }
    Ok(())
}

/// Fork the children of `e` from its stub through `r` (its trampoline),
/// each with its dumped PID and the sharing flags of [`share_flags`].
///
/// Errors: an ID is taken, a session cannot be rebuilt, or an injected
/// call failed.
pub fn fork_children(h: &mut Helper, ck: &Checkpoint, e: &PstreeEntry, r: &Remote) -> Result<()> {
    let mut orphaned: Vec<i32> = Vec::new();
    let mut direct = Vec::new();
    for c in ck.tree.iter().filter(|c| c.ppid == e.pid) {
        if in_leaderless_session(&ck.tree, e, c) {
            if !orphaned.contains(&c.sid) {
                orphaned.push(c.sid);
            }
            continue;
        }
        direct.push((share_flags(c), libc::SIGCHLD as u64, c.pid));
    }
    clone_all(h, r, &direct)?;
    for sid in orphaned {
        fork_into_session(h, ck, e, r, sid)?;
    }
    Ok(())
}

/// Whether `c`, a child of `e`, is in a session it does not lead and
/// cannot get from `e` (a root outside its own session is restored into
/// criu's, and so are its children in that session: they share `e.sid`).
fn in_leaderless_session(_tree: &[PstreeEntry], e: &PstreeEntry, c: &PstreeEntry) -> bool {
    c.sid != c.pid && c.sid != e.sid
}

/// The children of `e` in session `sid`, whose leader exited: a
/// short-lived task with PID `sid` is forked from `e`, starts the session
/// (and the process group `sid`) with setsid(2), forks each of those
/// children with `CLONE_PARENT` (so their parent is `e`), exits, and `e`
/// reaps it and drops its `SIGCHLD`. Upstream criu uses such a helper task
/// too.
///
/// Errors: PID `sid` is taken, or an injected call failed.
fn fork_into_session(
    h: &mut Helper,
    ck: &Checkpoint,
    e: &PstreeEntry,
    r: &Remote,
    sid: i32,
) -> Result<()> {
    clone_in(h, r, 0, libc::SIGCHLD as u64, sid).map_err(|er| in_use(er, sid))?;
    let hr = Remote { pid: sid, ..*r };
    hr.call(h, "setsid (session holder)", libc::SYS_setsid, [0; 6])?;
    for c in ck
        .tree
        .iter()
        .filter(|c| c.ppid == e.pid && in_leaderless_session(&ck.tree, e, c) && c.sid == sid)
    {
        // clone3 takes no exit signal with CLONE_PARENT: the child gets
        // the holder's own, SIGCHLD.
        clone_in(h, &hr, share_flags(c) | libc::CLONE_PARENT as u64, 0, c.pid)
            .map_err(|er| in_use(er, c.pid))?;
        info!(
            "pid {}: forked into session {sid} (its leader had exited) as a child of {}",
            c.pid, e.pid
        );
    }
    match hr.raw(h, libc::SYS_exit_group, [0; 6]) {
        Err(Error::Helper(HelperError::Failed {
            kind: ErrorKind::Gone,
            ..
        })) => {}
        Ok(ret) => {
            return Err(Error::Unsupported(format!(
                "pid {sid}: exit_group of the session holder returned {ret}"
            )))
        }
        Err(er) => return Err(er),
    }
    r.call(
        h,
        &format!("wait4({sid})"),
        libc::SYS_wait4,
        [sid as u64, 0, libc::__WALL as u64, 0, 0, 0],
    )?;
    // rt_sigtimedwait({SIGCHLD}, NULL, {0, 0}): drop its SIGCHLD.
    let set = r.put(h, 256, &(1u64 << (libc::SIGCHLD - 1)).to_le_bytes())?;
    let ts = r.put(h, 272, &[0u8; 16])?;
    r.raw(h, libc::SYS_rt_sigtimedwait, [set, 0, ts, 8, 0, 0])?;
    Ok(())
}

/// Once every process exists: process groups, then the zombies exit.
///
/// Errors: a group cannot be rebuilt, or an injected call failed.
pub fn finish_tree(h: &mut Helper, ck: &Checkpoint) -> Result<()> {
    set_groups(h, ck)?;
    for e in ck.tree.iter() {
        if let Some(status) = e.zombie {
            // A zombie has no core image; it was forked by its parent and
            // most likely still bears the parent's name, which is better
            // than the stub's "criu-helper".
            let name = ck
                .procs
                .iter()
                .find(|p| p.pstree.pid == e.ppid)
                .map(|p| p.core.comm.as_str())
                .unwrap_or("");
            make_zombie(h, e.pid, status, name)?;
        }
    }
    Ok(())
}

/// The clone(2) flags that make a child share what it shared with its
/// parent at dump: `CLONE_FS`, `CLONE_FILES`.
pub fn share_flags(e: &PstreeEntry) -> u64 {
    let mut f = 0;
    if e.shares_fs {
        f |= libc::CLONE_FS as u64;
    }
    if e.shares_files {
        f |= libc::CLONE_FILES as u64;
    }
    f
}

fn in_use(e: Error, pid: i32) -> Error {
    match e {
        Error::Injected {
            errno: nix::errno::Errno::EEXIST,
            ..
        } => match super::check_pid_free(pid) {
            Err(refusal) => refusal,
            Ok(()) => Error::Refused(format!("pid {pid} is already in use")),
        },
        other => other,
    }
}

/// Group leaders first (`setpgid(0, 0)`), then the members of groups led by
/// another process of the tree; a group inherited from the parent needs
/// nothing (also the root's group when its leader is outside the
/// checkpoint: the root and the members below it stay in the group the root
/// joined, criu's).
fn set_groups(h: &mut Helper, ck: &Checkpoint) -> Result<()> {
    let root = ck.tree[0].pid;
    for e in &ck.tree {
        if e.pgid == e.pid && e.sid != e.pid {
            Remote::new(e.pid).call(h, "setpgid(0, 0)", libc::SYS_setpgid, [0; 6])?;
        }
    }
    for e in &ck.tree {
        if e.pgid == e.pid {
            continue;
        }
        if e.pid == root {
            info!(
                "pid {root}: was in process group {} (not in the checkpoint); it stays in criu's",
                e.pgid
            );
            continue;
        }
        let parent = entry(ck, e.ppid);
        let parent_pgid = parent.map(|p| p.pgid);
        if parent.is_some_and(|p| in_leaderless_session(&ck.tree, p, e)) && e.pgid == e.sid {
            // Forked by the session holder: already in its group.
            continue;
        }
        if entry(ck, e.pgid).is_some() {
            Remote::new(e.pid).call(
                h,
                &format!("setpgid(0, {})", e.pgid),
                libc::SYS_setpgid,
                [0, e.pgid as u64, 0, 0, 0, 0],
            )?;
        } else if parent_pgid != Some(e.pgid) {
            return Err(Error::Unsupported(format!(
                "pid {}: its process group {} has no leader in the checkpoint; such groups cannot be rebuilt",
                e.pid, e.pgid
            )));
        } else if e.pgid == ck.tree[0].pgid {
            // The root's group is outside the checkpoint (a program started
            // by a shell without job control): its members stay with the
            // root, in the group it joined.
            debug!(
                "pid {}: in the root's process group {}, it stays with the root",
                e.pid, e.pgid
            );
        }
    }
    Ok(())
}

/// Make a stub exit as the dumped zombie did: `exit_group(code)`, or killed
/// by its signal. The helper consumes the tracer's notice only, so the
/// parent stub holds the zombie.
fn make_zombie(h: &mut Helper, pid: i32, status: i32, name: &str) -> Result<()> {
    if !name.is_empty() {
        let b = boot_scratch(h, pid)?;
        let p = b.put_cstr(h, 0, name)?;
        b.call(
            h,
            &format!("prctl(PR_SET_NAME, {name})"),
            libc::SYS_prctl,
            [libc::PR_SET_NAME as u64, p, 0, 0, 0, 0],
        )?;
    }
    let r = Remote::new(pid);
    let sig = status & 0x7f;
    if sig == 0 {
        let code = (status >> 8) & 0xff;
        match r.raw(h, libc::SYS_exit_group, [code as u64, 0, 0, 0, 0, 0]) {
            Err(Error::Helper(HelperError::Failed {
                kind: ErrorKind::Gone,
                ..
            })) => {}
            Ok(ret) => {
                return Err(Error::Unsupported(format!(
                    "pid {pid}: exit_group({code}) returned {ret}"
                )))
            }
            Err(e) => return Err(e),
        }
        info!("pid {pid}: zombie again (exit code {code})");
    } else {
        h.set_sigmask(pid, 0)?;
        // Stopped in the signal's delivery; released, it dies of it.
        let _ = r.raw(h, libc::SYS_kill, [pid as u64, sig as u64, 0, 0, 0, 0]);
        h.release(pid, ReleaseMode::Resume)?;
        info!("pid {pid}: zombie again (killed by signal {sig})");
    }
    Ok(())
}

#[cfg(test)]
mod rebuild_tests {
    use super::*;

    fn e(pid: i32, ppid: i32, pgid: i32, sid: i32) -> PstreeEntry {
        PstreeEntry {
            pid,
            ppid,
            pgid,
            sid,
            threads: vec![pid],
            zombie: None,
            shares_fs: false,
            shares_files: false,
        }
    }

    #[test]
    fn sessions_and_groups_that_can_and_cannot_be_rebuilt() {
        // Root leads its session; a child inherits it; a grandchild leads
        // its own; a member of a group led elsewhere in the tree.
        let ok = [
            e(10, 1, 10, 10),
            e(11, 10, 10, 10),
            e(12, 11, 12, 12),
            e(13, 10, 11, 10),
        ];
        check_rebuildable(&ok).unwrap();
        // Root outside its session (started by a shell): its children may
        // be in criu's session and group.
        check_rebuildable(&[e(10, 1, 5, 5), e(11, 10, 5, 5)]).unwrap();
        // Session 20 whose leader exited, below the root that leads its
        // own: rebuilt through a session holder (also group 20).
        check_rebuildable(&[e(10, 1, 10, 10), e(21, 10, 21, 20)]).unwrap();
        check_rebuildable(&[e(10, 1, 10, 10), e(21, 10, 20, 20), e(22, 10, 20, 20)]).unwrap();
        // ... but not when children of two parents are in it.
        let bad = [
            e(10, 1, 10, 10),
            e(11, 10, 10, 10),
            e(21, 10, 21, 20),
            e(22, 11, 22, 20),
        ];
        let m = check_rebuildable(&bad).unwrap_err().to_string();
        assert!(m.contains("pid 22: its session 20"), "{m}");
        // Group 30 with no leader in the tree, not the parent's.
        let bad = [e(10, 1, 10, 10), e(11, 10, 30, 10)];
        let m = check_rebuildable(&bad).unwrap_err().to_string();
        assert!(m.contains("pid 11: its process group 30"), "{m}");
    }
}
