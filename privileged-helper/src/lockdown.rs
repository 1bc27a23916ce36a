//! Start-up steps 3 and 4 (SECURITY.md): keep only the capabilities the
//! serving helper needs, set `NO_NEW_PRIVS`, install the seccomp filter of
//! `seccomp_policies::helper_policy()`. Also the spawner's smaller set.

#![forbid(unsafe_code)]

use crate::creds::Caller;
use caps::{CapSet, Capability, CapsHashSet};

/// What the serving helper keeps in setuid mode: `CAP_SYS_PTRACE` only,
/// for `PTRACE_SEIZE` and /proc/PID/mem when Yama (`ptrace_scope` 1)
/// allows only descendants to be traced. Signals to the caller's own tasks
/// need no capability (real uid equal), and files are opened with the
/// caller's fsuid, so no `CAP_DAC_*`.
const SETUID_KEEP: &[Capability] = &[Capability::CAP_SYS_PTRACE];

/// What it keeps when root runs it: targets may belong to any user, so also
/// the file-permission and signal overrides for /proc/PID/mem and
/// pidfd_send_signal(2).
const ROOT_KEEP: &[Capability] = &[
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_KILL,
];

/// What the spawner keeps in setuid mode: clone3(2) `set_tid` and writing
/// `ns_last_pid` (`CAP_CHECKPOINT_RESTORE`, Linux 5.9+), and the stub's drop
/// to the caller's IDs (`CAP_SETUID`, `CAP_SETGID`). Deliberately not
/// `CAP_SYS_ADMIN` (nor `CAP_SYS_RESOURCE`): with either, fork(2) skips the
/// caller's `RLIMIT_NPROC`, and stubs would let a user exceed it.
const SPAWNER_KEEP: &[Capability] = &[
    Capability::CAP_CHECKPOINT_RESTORE,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
];

/// A start-up step that failed, for the one-line fatal message.
#[derive(Debug)]
pub struct StepFailed(pub &'static str);

fn step<T, E>(r: Result<T, E>, what: &'static str) -> Result<T, StepFailed> {
    r.map_err(|_| StepFailed(what))
}

/// Reduce effective and permitted to `keep` (what of it we have), clear
/// inheritable and ambient, and check the result.
fn keep_only(keep: &[Capability]) -> Result<(), StepFailed> {
    let permitted = step(caps::read(None, CapSet::Permitted), "capget")?;
    let keep: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    step(
        caps::clear(None, CapSet::Ambient),
        "clearing ambient capabilities",
    )?;
    step(
        caps::clear(None, CapSet::Inheritable),
        "clearing inheritable capabilities",
    )?;
    step(
        caps::set(None, CapSet::Effective, &keep),
        "setting effective capabilities",
    )?;
    step(
        caps::set(None, CapSet::Permitted, &keep),
        "setting permitted capabilities",
    )?;
    for set in [CapSet::Effective, CapSet::Permitted] {
        if step(caps::read(None, set), "capget")? != keep {
            return Err(StepFailed("capabilities not dropped"));
        }
    }
    for set in [CapSet::Inheritable, CapSet::Ambient] {
        if !step(caps::read(None, set), "capget")?.is_empty() {
            return Err(StepFailed("capabilities not dropped"));
        }
    }
    Ok(())
}

/// The spawner in setuid mode. Its bounding set is left alone: stubs
/// inherit it, and a restored program that later runs a setuid program must
/// get what it would have got before the dump.
pub fn spawner_caps() -> Result<(), StepFailed> {
    keep_only(SPAWNER_KEEP)
}

/// Steps 3 and 4 for the serving helper.
///
/// In setuid mode the filesystem IDs become the caller's first
/// (setfsuid(2)): every file the helper opens from now on is opened with the
/// caller's permissions.
pub fn lock_down(caller: &Caller) -> Result<(), StepFailed> {
    let keep = if caller.is_root() {
        ROOT_KEEP
    } else {
        use nix::unistd::{setfsgid, setfsuid, Gid, Uid};
        setfsgid(Gid::from_raw(caller.gid));
        setfsuid(Uid::from_raw(caller.uid));
        // Each call returns the previous value: a second call shows whether
        // the first took effect.
        if setfsgid(Gid::from_raw(caller.gid)).as_raw() != caller.gid
            || setfsuid(Uid::from_raw(caller.uid)).as_raw() != caller.uid
        {
            return Err(StepFailed("setfsuid"));
        }
        SETUID_KEEP
    };
    // The bounding set first: dropping from it needs CAP_SETPCAP.
    if step(
        caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP),
        "capget",
    )? {
        for cap in caps::runtime::thread_all_supported() {
            if !keep.contains(&cap) {
                step(
                    caps::drop(None, CapSet::Bounding, cap),
                    "dropping from the bounding set",
                )?;
            }
        }
    }
    keep_only(keep)?;
    step(nix::sys::prctl::set_no_new_privs(), "PR_SET_NO_NEW_PRIVS")?;
    let filter = step(
        seccomp_policies::helper_policy(),
        "compiling the seccomp filter",
    )?;
    step(
        seccompiler::apply_filter(&filter),
        "installing the seccomp filter",
    )
}
