//! Setuid mode: who the caller is, and whether a task is one the caller
//! could trace by themselves (DESIGN.md section 4, SECURITY.md).
//!
//! A task passes when its real, effective and saved uid and gid all equal
//! the caller's real uid and gid, it holds no capability in its inheritable,
//! permitted, effective or ambient set, and it is dumpable. The check is
//! made on every request through the task's pidfd, so a PID that was reused
//! between the read of /proc/PID/status and the decision is caught.

#![forbid(unsafe_code)]

use crate::ptrace::Fail;
use crate::sys;
use nix::errno::Errno;
use nix::unistd::Pid;
use shared_ipc::{CapSet, DenyReason, ErrorKind};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

/// The helper's caller: its real IDs and supplementary groups, read first
/// thing at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Real uid (the caller's, even when the helper runs setuid root).
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Supplementary groups (getgroups(2)).
    pub groups: Vec<u32>,
}

impl Caller {
    /// The caller of this process.
    pub fn of_this_process() -> Result<Caller, nix::errno::Errno> {
        let groups = nix::unistd::getgroups()?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        Ok(Caller {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            groups,
        })
    }

    /// Root (real uid 0): full mode, no restriction on targets.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// The credentials of a task as /proc/PID/status shows them (proc(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCreds {
    /// Real, effective, saved uid.
    pub uid: [u32; 3],
    /// Real, effective, saved gid.
    pub gid: [u32; 3],
    /// `CapInh`, `CapPrm`, `CapEff`, `CapAmb`.
    pub caps: [(CapSet, u64); 4],
    /// The task has no memory any more: a zombie or dead task (`State:`
    /// `Z`/`X`), or one past exit_mm() while it exits (status then has no
    /// `VmSize:` line). The kernel shows such a task's /proc files as
    /// root's whatever its dumpable flag was (`task_dump_owner`,
    /// fs/proc/base.c).
    pub no_mm: bool,
}

/// Parse the `Uid:`, `Gid:` and `Cap*:` lines of /proc/PID/status.
pub fn parse_status(status: &str) -> Option<TaskCreds> {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let ids = |key: &str| -> Option<[u32; 3]> {
        let mut it = field(key)?.split_whitespace().map(|v| v.parse().ok());
        Some([it.next()??, it.next()??, it.next()??])
    };
    let cap = |key: &str| u64::from_str_radix(field(key)?, 16).ok();
    let no_mm = matches!(
        field("State:").and_then(|s| s.chars().next()),
        Some('Z' | 'X')
    ) || field("VmSize:").is_none();
    Some(TaskCreds {
        uid: ids("Uid:")?,
        gid: ids("Gid:")?,
        caps: [
            (CapSet::Inheritable, cap("CapInh:")?),
            (CapSet::Permitted, cap("CapPrm:")?),
            (CapSet::Effective, cap("CapEff:")?),
            (CapSet::Ambient, cap("CapAmb:")?),
        ],
        no_mm,
    })
}

/// The rule itself: IDs equal to the caller's, no capability, dumpable
/// (`proc_owner` is the owner of /proc/PID/status, which the kernel sets to
/// the task's euid only when the task is dumpable, and to root otherwise;
/// the /proc/PID directory itself keeps the euid either way, see
/// `task_dump_owner` in fs/proc/base.c).
pub fn judge(creds: &TaskCreds, proc_owner: u32, caller: &Caller) -> Result<(), DenyReason> {
    if let Some(r) = DenyReason::uid(creds.uid, caller.uid) {
        return Err(r);
    }
    if let Some(r) = DenyReason::gid(creds.gid, caller.gid) {
        return Err(r);
    }
    if let Some(&(set, mask)) = creds.caps.iter().find(|(_, m)| *m != 0) {
        return Err(DenyReason::Caps { set, mask });
    }
    if proc_owner != caller.uid && !creds.no_mm {
        return Err(DenyReason::NotDumpable);
    }
    Ok(())
}

/// Check task `pid`, pinned by `pidfd`, for `caller`: read its status and
/// the owner of /proc/PID/status, then make sure the pidfd's process is still alive
/// (pidfd_send_signal(2) with signal 0) so that what was read is its own and
/// not a new process's with the same PID. Root callers pass at once.
pub fn check_task(pid: Pid, pidfd: &OwnedFd, caller: &Caller) -> Result<(), Fail> {
    if caller.is_root() {
        return Ok(());
    }
    let gone = Fail::bare(ErrorKind::Gone);
    // The owner first: a task that loses its memory (exits) in between is
    // then seen without it in the status, never the other way round.
    let owner = std::fs::metadata(format!("/proc/{pid}/status"))
        .map_err(|_| gone)?
        .uid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| gone)?;
    // EPERM (a task of another user: we keep no CAP_KILL) still proves the
    // task alive; only ESRCH says it is gone.
    match sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(pidfd), 0) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return Err(gone),
    }
    let creds = parse_status(&status).ok_or(gone)?;
    judge(&creds, owner, caller).map_err(Fail::denied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_ipc::IdField;

    const STATUS: &str = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\n\
        Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n\
        Groups:\t100 27\nVmSize:\t  10000 kB\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
        CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";

    fn caller() -> Caller {
        Caller {
            uid: 1000,
            gid: 100,
            groups: vec![27],
        }
    }

    #[test]
    fn own_task_passes() {
        let c = parse_status(STATUS).unwrap();
        assert_eq!(c.uid, [1000; 3]);
        assert_eq!(judge(&c, 1000, &caller()), Ok(()));
    }

    #[test]
    fn every_id_and_set_is_checked() {
        let c = parse_status(STATUS).unwrap();
        let mut t = c;
        t.uid[2] = 0;
        assert_eq!(
            judge(&t, 1000, &caller()),
            Err(DenyReason::Uid {
                which: IdField::Saved,
                target: 0,
                caller: 1000
            })
        );
        let mut t = c;
        t.gid[1] = 5;
        assert_eq!(
            judge(&t, 1000, &caller()),
            Err(DenyReason::Gid {
                which: IdField::Effective,
                target: 5,
                caller: 100
            })
        );
        for i in 0..4 {
            let mut t = c;
            t.caps[i].1 = 1 << 13;
            assert_eq!(
                judge(&t, 1000, &caller()),
                Err(DenyReason::Caps {
                    set: t.caps[i].0,
                    mask: 1 << 13
                })
            );
        }
        assert_eq!(judge(&c, 0, &caller()), Err(DenyReason::NotDumpable));
        // A zombie's files are root's whatever it was: only its IDs count.
        let z = parse_status(&STATUS.replace("S (sleeping)", "Z (zombie)")).unwrap();
        assert!(z.no_mm && !c.no_mm);
        // Past exit_mm(): no Vm lines, still running.
        let exiting = parse_status(&STATUS.replace("VmSize:\t  10000 kB\n", "")).unwrap();
        assert!(exiting.no_mm);
        assert_eq!(judge(&exiting, 0, &caller()), Ok(()));
        assert_eq!(judge(&z, 0, &caller()), Ok(()));
        let mut z2 = z;
        z2.uid[0] = 0;
        assert!(judge(&z2, 0, &caller()).is_err());
    }

    #[test]
    fn bounding_set_is_not_a_privilege_and_garbage_is_refused() {
        // CapBnd is full in STATUS and the task still passes (own_task_passes).
        assert_eq!(parse_status("Uid:\t1\t1\nGid:\t1\t1\t1\n"), None);
        assert_eq!(parse_status(&STATUS.replace("CapAmb", "CapXyz")), None);
        assert_eq!(
            parse_status(&STATUS.replace("\t1000\t1000\t1000\t1000", "\tx 1 1 1")),
            None
        );
    }
}
