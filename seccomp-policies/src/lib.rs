//! Seccomp filters for `criu-helper`, kept as reviewed data: every allowed
//! system call is listed with the reason the helper needs it and, where it
//! matters, the argument values it may take. Everything else kills the
//! process (`SECCOMP_RET_KILL_PROCESS`, see seccomp(2)).
//!
//! The helper installs [`helper_policy`] at step 4 of its start-up order
//! (`privileged-helper/src/main.rs`), after forking its spawner (stubs must
//! not inherit the filter), connecting to syslog and dropping capabilities,
//! and before reading the first frame.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Which values of one argument a call may take.
#[derive(Debug, Clone, Copy)]
pub enum Args {
    /// Any arguments.
    Any,
    /// Argument `index` (a 32-bit value) must be one of `values`.
    OneOf {
        /// Argument number, 0-based.
        index: u8,
        /// Allowed values, each with its name.
        values: &'static [(u64, &'static str)],
    },
    /// Argument `index` must have none of the bits in `mask` set.
    NoBits {
        /// Argument number, 0-based.
        index: u8,
        /// Forbidden bits.
        mask: u64,
        /// Their name.
        name: &'static str,
    },
}

/// One allowed system call.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    /// x86-64 system call number.
    pub nr: i64,
    /// Its name.
    pub name: &'static str,
    /// Why the helper needs it.
    pub why: &'static str,
    /// Argument constraints.
    pub args: Args,
}

const fn any(nr: i64, name: &'static str, why: &'static str) -> Allowed {
    Allowed {
        nr,
        name,
        why,
        args: Args::Any,
    }
}

/// The `ptrace` requests the helper makes (see ptrace(2)).
const PTRACE_REQUESTS: &[(u64, &str)] = &[
    (libc::PTRACE_SEIZE as u64, "PTRACE_SEIZE"),
    (libc::PTRACE_INTERRUPT as u64, "PTRACE_INTERRUPT"),
    (libc::PTRACE_CONT as u64, "PTRACE_CONT"),
    (libc::PTRACE_SYSCALL as u64, "PTRACE_SYSCALL"),
    (libc::PTRACE_DETACH as u64, "PTRACE_DETACH"),
    (libc::PTRACE_GETREGS as u64, "PTRACE_GETREGS"),
    (libc::PTRACE_SETREGS as u64, "PTRACE_SETREGS"),
    (libc::PTRACE_GETREGSET as u64, "PTRACE_GETREGSET"),
    (libc::PTRACE_SETREGSET as u64, "PTRACE_SETREGSET"),
    (0x420a, "PTRACE_GETSIGMASK"),
    (0x420b, "PTRACE_SETSIGMASK"),
    (0x4209, "PTRACE_PEEKSIGINFO"),
    (0x420f, "PTRACE_GET_RSEQ_CONFIGURATION"),
    (0x4201, "PTRACE_GETEVENTMSG"),
];

/// What the helper's serve loop needs, and why. Start-up (before step 4)
/// is not covered: it runs before the filter is installed.
pub const HELPER_SYSCALLS: &[Allowed] = &[
    // The channel.
    any(
        libc::SYS_recvmsg,
        "recvmsg",
        "receive a request frame and its SCM_RIGHTS descriptors",
    ),
    any(
        libc::SYS_sendmsg,
        "sendmsg",
        "send a response; pass stub descriptors to the spawner",
    ),
    any(
        libc::SYS_close,
        "close",
        "drop received descriptors, pidfds, /proc files",
    ),
    Allowed {
        nr: libc::SYS_fcntl,
        name: "fcntl",
        why: "debug builds of std check that a descriptor is open before closing it",
        args: Args::OneOf {
            index: 1,
            values: &[(libc::F_GETFD as u64, "F_GETFD")],
        },
    },
    // Tracing.
    Allowed {
        nr: libc::SYS_ptrace,
        name: "ptrace",
        why: "seize, interrupt, registers, signal mask, syscall injection, detach",
        args: Args::OneOf {
            index: 0,
            values: PTRACE_REQUESTS,
        },
    },
    any(
        libc::SYS_wait4,
        "wait4",
        "waitpid(pid, __WALL) for ptrace stops and exits",
    ),
    any(
        libc::SYS_waitid,
        "waitid",
        "libc may implement waitpid with it",
    ),
    any(
        libc::SYS_pidfd_open,
        "pidfd_open",
        "pin each tracee so signals never hit a reused pid",
    ),
    any(
        libc::SYS_pidfd_send_signal,
        "pidfd_send_signal",
        "SIGSTOP/SIGKILL/re-sent signal on release; signal 0 proves the pidfd's task is alive",
    ),
    Allowed {
        nr: libc::SYS_kill,
        name: "kill",
        why: "kill a just-created stub (our unreaped child) when pidfd_open fails",
        args: Args::OneOf {
            index: 1,
            values: &[(libc::SIGKILL as u64, "SIGKILL")],
        },
    },
    any(
        libc::SYS_nanosleep,
        "nanosleep",
        "1 ms pauses while a new stub reaches pause(2)",
    ),
    any(
        libc::SYS_clock_nanosleep,
        "clock_nanosleep",
        "how glibc implements nanosleep",
    ),
    // Task memory and images.
    any(
        libc::SYS_openat,
        "openat",
        "open /proc/PID/mem and /proc/PID/status (setuid-mode check)",
    ),
    any(libc::SYS_read, "read", "read /proc/PID/status"),
    any(
        libc::SYS_lseek,
        "lseek",
        "std's read_to_string asks the current offset",
    ),
    any(
        libc::SYS_statx,
        "statx",
        "std's read_to_string sizes its buffer; owner of /proc/PID (dumpable check)",
    ),
    any(libc::SYS_fstat, "fstat", "fallback of statx in std"),
    any(
        libc::SYS_newfstatat,
        "newfstatat",
        "fstat as newer glibc implements it",
    ),
    any(
        libc::SYS_pread64,
        "pread64",
        "read task memory through /proc/PID/mem",
    ),
    any(
        libc::SYS_pwrite64,
        "pwrite64",
        "write task memory through /proc/PID/mem",
    ),
    Allowed {
        nr: libc::SYS_pidfd_getfd,
        name: "pidfd_getfd",
        why: "TakePipe: the read end of the pipe a seized target vmsplices its pages into, for the frontend; the kernel allows it only to a tracer",
        args: Args::OneOf {
            index: 2,
            values: &[(0, "no flags")],
        },
    },
    any(
        libc::SYS_process_vm_readv,
        "process_vm_readv",
        "copy page runs in large batches",
    ),
    any(
        libc::SYS_write,
        "write",
        "write pages to the image descriptor; one-line fatal messages",
    ),
    // Process identity.
    any(libc::SYS_getuid, "getuid", "caller_uid in the Hello answer"),
    any(libc::SYS_getpid, "getpid", "refuse to seize ourselves"),
    any(libc::SYS_getppid, "getppid", "refuse to seize our parent"),
    // Memory allocator.
    any(libc::SYS_brk, "brk", "malloc heap"),
    Allowed {
        nr: libc::SYS_mmap,
        name: "mmap",
        why: "malloc of large buffers (the 8 MiB page buffer)",
        args: Args::NoBits {
            index: 2,
            mask: libc::PROT_EXEC as u64,
            name: "PROT_EXEC",
        },
    },
    Allowed {
        nr: libc::SYS_mprotect,
        name: "mprotect",
        why: "malloc arena growth",
        args: Args::NoBits {
            index: 2,
            mask: libc::PROT_EXEC as u64,
            name: "PROT_EXEC",
        },
    },
    any(libc::SYS_munmap, "munmap", "free of large buffers"),
    any(libc::SYS_mremap, "mremap", "realloc of large buffers"),
    any(
        libc::SYS_madvise,
        "madvise",
        "malloc returning memory (MADV_DONTNEED)",
    ),
    any(libc::SYS_futex, "futex", "std's stdio locks when contended"),
    // Security log (the socket was connected before the filter).
    any(
        libc::SYS_sendto,
        "sendto",
        "send(2) of a syslog record on the datagram socket to /dev/log",
    ),
    any(
        libc::SYS_clock_gettime,
        "clock_gettime",
        "syslog timestamp, when the vDSO falls back to the system call",
    ),
    // Leaving.
    any(libc::SYS_exit_group, "exit_group", "process::exit"),
    any(libc::SYS_exit, "exit", "thread exit"),
    any(
        libc::SYS_sigaltstack,
        "sigaltstack",
        "std disables its stack-overflow signal stack when the process exits",
    ),
];

fn rules_for(a: &Allowed) -> Result<Vec<SeccompRule>, BackendError> {
    match a.args {
        Args::Any => Ok(Vec::new()),
        Args::OneOf { index, values } => values
            .iter()
            .map(|&(v, _)| {
                let c = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)?;
                SeccompRule::new(vec![c])
            })
            .collect(),
        Args::NoBits { index, mask, .. } => {
            let c = SeccompCondition::new(
                index,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(mask),
                0,
            )?;
            Ok(vec![SeccompRule::new(vec![c])?])
        }
    }
}

/// The filter for the helper's serve loop: the calls in
/// [`HELPER_SYSCALLS`] are allowed, anything else kills the process.
///
/// Errors: a [`BackendError`] if the table is inconsistent (e.g. a bad
/// argument index); the unit tests prove it is not, and that no call is
/// listed twice (a second entry would replace the first).
pub fn helper_policy() -> Result<BpfProgram, BackendError> {
    let mut rules = BTreeMap::new();
    for a in HELPER_SYSCALLS {
        rules.insert(a.nr, rules_for(a)?);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    BpfProgram::try_from(filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn policy_compiles() {
        let prog = helper_policy().unwrap();
        assert!(!prog.is_empty());
        assert!(
            prog.len() < 4096,
            "BPF programs are limited to 4096 instructions"
        );
    }

    #[test]
    fn every_entry_says_why_and_appears_once() {
        let mut seen = std::collections::BTreeSet::new();
        for a in HELPER_SYSCALLS {
            assert!(!a.why.is_empty() && !a.name.is_empty(), "{a:?}");
            assert!(seen.insert(a.nr), "{} listed twice", a.name);
        }
    }

    const PROBE: &str = "SECCOMP_POLICIES_PROBE";

    /// Runs in a child process (see the two tests below): installs the
    /// filter on this thread, makes allowed calls, then, if asked, one that
    /// is not in the policy.
    #[test]
    fn probe_child() {
        let Some(mode) = std::env::var_os(PROBE) else {
            return;
        };
        seccompiler::apply_filter(&helper_policy().unwrap()).unwrap();
        let _ = std::process::id();
        let _ = std::fs::read_to_string("/proc/self/status");
        if mode == "denied" {
            let _ = std::net::UdpSocket::bind("127.0.0.1:0");
        }
        std::process::exit(7);
    }

    fn probe(mode: &str) -> std::process::ExitStatus {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::probe_child", "--test-threads=1"])
            .env(PROBE, mode)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
    }

    #[test]
    fn calls_outside_the_policy_are_killed() {
        use std::os::unix::process::ExitStatusExt;
        let status = probe("denied");
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}");
    }

    #[test]
    fn calls_in_the_policy_are_allowed() {
        let status = probe("allowed");
        assert_eq!(status.code(), Some(7), "{status:?}");
    }
}
