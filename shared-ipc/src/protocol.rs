//! The messages exchanged between the frontend (`criu`) and the helper
//! (`criu-helper`).
//!
//! The protocol is closed and lock-step: the frontend sends one [`Request`],
//! the helper answers with exactly one [`Response`]. Descriptors travel only as
//! `SCM_RIGHTS` ancillary data of the frame that names them (see unix(7)).
//! Every size and count in a request is bounded by the constants below; the
//! helper re-checks them and answers [`ErrorKind::BadRequest`] when one is out
//! of range.

use serde::{Deserialize, Serialize};

/// Version of this protocol. The first exchange on a channel is
/// [`Request::Hello`] / [`Response::Hello`]; both sides refuse to go on when
/// the versions differ.
pub const PROTOCOL_VERSION: u32 = 1;

/// Magic sent in the handshake so that a helper started by something that is
/// not our frontend stops at once ("CRIUIPC1" as a little-endian u64).
pub const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"CRIUIPC1");

/// Largest frame (4-byte length prefix plus postcard payload) in bytes.
/// Checked before anything is decoded.
pub const MAX_FRAME: usize = 64 * 1024;

/// Most descriptors one frame may carry with `SCM_RIGHTS`.
pub const MAX_FDS_PER_FRAME: usize = 16;

/// Most bytes one [`Request::ReadMemory`] or [`Request::WriteMemory`] moves.
/// Bulk page data never goes through frames: see [`Request::DumpPages`].
pub const MAX_MEM_IO: u32 = 32 * 1024;

/// Most page runs in one [`Request::DumpPages`].
pub const MAX_PAGE_RUNS: usize = 2048;

/// Most steps in one [`Request::SyscallBatch`].
pub const MAX_BATCH_STEPS: usize = 256;

/// Most siginfo records returned by one [`Request::PeekSiginfo`].
pub const MAX_SIGINFO: u32 = 128;

/// Size of a kernel `siginfo_t` in bytes (see sigaction(2)).
pub const SIGINFO_SIZE: usize = 128;

/// Most bytes of `NT_X86_XSTATE` data accepted in [`Request::SetRegs`]
/// (the largest x86-64 XSAVE area with AMX tiles is about 11 KiB).
pub const MAX_XSTATE: usize = 16 * 1024;

/// Largest address of user space on x86-64 with 4-level paging plus one
/// (`TASK_SIZE`, see Documentation/arch/x86/x86_64/mm.rst).
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;

/// Process ID as the kernel uses it (`pid_t`).
pub type Pid = i32;

/// General purpose registers of an x86-64 task, in the kernel's
/// `struct user_regs_struct` order (see `<sys/user.h>` and ptrace(2),
/// `PTRACE_GETREGS`). `fs_base` and `gs_base` are the TLS bases.
#[allow(missing_docs)]
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// One contiguous run of virtual memory to copy, in bytes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// Start address, page aligned.
    pub addr: u64,
    /// Length in bytes, a multiple of the page size.
    pub len: u64,
}

/// One step of a [`Request::SyscallBatch`]: exactly what the request of
/// the same name would do on its own.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum BatchStep {
    /// As [`Request::WriteMemory`]: write `data` at `addr` in the task.
    Write {
        /// Start address.
        addr: u64,
        /// Bytes to write (all writes of a batch together at most
        /// [`MAX_MEM_IO`] bytes).
        data: Vec<u8>,
    },
    /// As [`Request::Syscall`]: run system call `nr` with `args`.
    Syscall {
        /// System call number (x86-64 table).
        nr: u64,
        /// Arguments in `rdi, rsi, rdx, r10, r8, r9` order.
        args: [u64; 6],
    },
    /// As [`Request::SetRegs`]: set the registers and, if given, the XSAVE
    /// area (at most [`MAX_XSTATE`] bytes; counted with the writes as
    /// [`BATCH_REGS_BYTES`] plus its length).
    SetRegs {
        /// New registers.
        regs: UserRegs,
        /// New XSAVE area.
        xstate: Option<Vec<u8>>,
    },
    /// As [`Request::SetSigmask`]: set the blocked signal mask.
    SetSigmask {
        /// Bit `n - 1` blocks signal `n`.
        mask: u64,
    },
}

/// What a [`BatchStep::SetRegs`] counts against the [`MAX_MEM_IO`] bytes of
/// a batch besides its XSAVE area (its registers as varints, at most 270
/// bytes, rounded up), so that every batch within bounds fits a frame.
pub const BATCH_REGS_BYTES: usize = 288;

impl BatchStep {
    /// Bytes this step counts against the [`MAX_MEM_IO`] of a batch.
    pub fn bytes(&self) -> usize {
        match self {
            BatchStep::Write { data, .. } => data.len(),
            BatchStep::SetRegs { xstate, .. } => {
                BATCH_REGS_BYTES.saturating_add(xstate.as_ref().map_or(0, Vec::len))
            }
            BatchStep::Syscall { .. } | BatchStep::SetSigmask { .. } => 0,
        }
    }
}

/// What to do with a task when the frontend is done with it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseMode {
    /// Detach and let it run. For a seized (dumped) task the helper first puts
    /// back the registers and signal mask it had when it was seized.
    Resume,
    /// Like `Resume`, but the task is left stopped by `SIGSTOP`.
    Stop,
    /// Kill it with `SIGKILL` (through its pidfd).
    Kill,
}

/// The rseq registration of a task (see rseq(2) and ptrace(2),
/// `PTRACE_GET_RSEQ_CONFIGURATION`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RseqConfig {
    /// Address of the registered `struct rseq`; 0 when none is registered.
    pub rseq_abi_pointer: u64,
    /// Size of the registered area in bytes.
    pub rseq_abi_size: u32,
    /// Signature passed at registration.
    pub signature: u32,
    /// Registration flags.
    pub flags: u32,
}

/// How a task ended (see wait(2)).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// `_exit` with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// A request from the frontend to the helper.
///
/// Every request that names a `pid` acts on a task the helper traces on this
/// channel (made by [`Request::Seize`] or [`Request::CreateStub`]); any other
/// pid is answered with [`ErrorKind::NotTraced`].
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// First frame on a channel.
    Hello {
        /// Must be [`HELLO_MAGIC`].
        magic: u64,
        /// Must be [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// Seize a live task with `PTRACE_SEIZE` and stop it with
    /// `PTRACE_INTERRUPT` (ptrace(2)). The helper keeps its registers and
    /// signal mask so that it can put them back on release or on any failure.
    Seize {
        /// Thread group leader to seize (single-threaded tasks only for now).
        pid: Pid,
    },
    /// Create a restore stub: a new process with exactly PID `pid` (clone3(2)
    /// with `set_tid`), whose descriptors are only the ones sent with this
    /// frame, placed at the numbers in `fds` (the i-th descriptor at `fds[i]`),
    /// seized and stopped. Its address space is a copy of the helper's, so
    /// [`Response::Stub`] names a `syscall` instruction in it.
    CreateStub {
        /// The PID to create.
        pid: Pid,
        /// Target numbers of the descriptors passed with this frame.
        fds: Vec<i32>,
    },
    /// Read general registers and the XSAVE area (`PTRACE_GETREGS`,
    /// `PTRACE_GETREGSET` `NT_X86_XSTATE`).
    GetRegs {
        /// Traced task.
        pid: Pid,
    },
    /// Set general registers and, if given, the XSAVE area.
    SetRegs {
        /// Traced task.
        pid: Pid,
        /// New registers.
        regs: UserRegs,
        /// New XSAVE area as returned by `GetRegs`, at most [`MAX_XSTATE`] bytes.
        xstate: Option<Vec<u8>>,
    },
    /// Read the blocked signal mask (`PTRACE_GETSIGMASK`).
    GetSigmask {
        /// Traced task.
        pid: Pid,
    },
    /// Set the blocked signal mask (`PTRACE_SETSIGMASK`).
    SetSigmask {
        /// Traced task.
        pid: Pid,
        /// Bit `n - 1` blocks signal `n`.
        mask: u64,
    },
    /// Read queued signals without removing them (`PTRACE_PEEKSIGINFO`).
    PeekSiginfo {
        /// Traced task.
        pid: Pid,
        /// The process-wide queue instead of the thread's own.
        shared: bool,
        /// Index of the first record.
        offset: u32,
        /// Most records wanted, at most [`MAX_SIGINFO`].
        count: u32,
    },
    /// Read the rseq registration (`PTRACE_GET_RSEQ_CONFIGURATION`).
    GetRseq {
        /// Traced task.
        pid: Pid,
    },
    /// Name the address of a `syscall` instruction (bytes `0f 05`) in the task
    /// for [`Request::Syscall`] to use. The helper checks the bytes.
    SetGadget {
        /// Traced task.
        pid: Pid,
        /// Address of the instruction.
        addr: u64,
    },
    /// Run one system call in the task: registers are set to `nr` and `args`
    /// with the instruction pointer at the gadget, and the task runs to the
    /// syscall-exit stop (`PTRACE_SYSCALL`). No signal is generated. For a
    /// seized target all signals are blocked during the call and afterwards
    /// its seize-time registers and mask are put back, so it can always run
    /// on if the helper dies; a stub's registers are left as the call left
    /// them (the frontend sets the final ones).
    Syscall {
        /// Traced task.
        pid: Pid,
        /// System call number (x86-64 table).
        nr: u64,
        /// Arguments in `rdi, rsi, rdx, r10, r8, r9` order.
        args: [u64; 6],
    },
    /// Read task memory through `/proc/PID/mem` (works on any mapping the
    /// task may read or could make readable). At most [`MAX_MEM_IO`] bytes.
    ReadMemory {
        /// Traced task.
        pid: Pid,
        /// Start address.
        addr: u64,
        /// Length in bytes.
        len: u32,
    },
    /// Write task memory through `/proc/PID/mem`. At most [`MAX_MEM_IO`] bytes.
    WriteMemory {
        /// Traced task.
        pid: Pid,
        /// Start address.
        addr: u64,
        /// Bytes to write.
        data: Vec<u8>,
    },
    /// Copy the given runs of the task's memory, in order, to the descriptor
    /// sent with this frame (an image file the frontend opened), at its
    /// current offset. Pages move in large `process_vm_readv(2)` batches and
    /// never pass through the channel.
    DumpPages {
        /// Traced task.
        pid: Pid,
        /// Runs to copy, at most [`MAX_PAGE_RUNS`].
        runs: Vec<PageRun>,
    },
    /// Stop tracing a task; see [`ReleaseMode`].
    Release {
        /// Traced task.
        pid: Pid,
        /// What becomes of it.
        how: ReleaseMode,
    },
    /// Wait until a released stub that the helper created exits, and report
    /// how (the helper is its parent). Blocks the channel until then.
    WaitExit {
        /// Created task.
        pid: Pid,
    },
    /// Make `pid` the next PID the kernel hands out in the helper's PID
    /// namespace (the spawner writes `pid - 1` to
    /// `/proc/sys/kernel/ns_last_pid`), so that a fork or clone injected
    /// next into the stub `parent` gets it without `set_tid`, which needs a
    /// capability the stub lacks in setuid mode. Another process of the
    /// system may fork first and take it: the caller checks the PID it got.
    SetNextPid {
        /// A stub created on this channel that will fork or clone next.
        parent: Pid,
        /// The wanted PID.
        pid: Pid,
    },
    /// Hand the frontend the read end of a pipe of a seized target, sent
    /// with the answer [`Response::Pipe`]. The helper takes a copy of the
    /// task's descriptor `pipe_fd` with pidfd_getfd(2) and refuses anything
    /// that is not a pipe ([`ErrorKind::Pipe`]). The frontend created the
    /// pipe in the task with an injected pipe2(2) and fills it with injected
    /// vmsplice(2)s of the task's own pages, then splice(2)s it into the
    /// image itself: pages are copied once, and the copy runs while the next
    /// vmsplice is injected.
    TakePipe {
        /// Seized target (not a stub).
        pid: Pid,
        /// A pipe end, as a descriptor number in the task.
        pipe_fd: i32,
    },
    /// Run up to [`MAX_BATCH_STEPS`] steps on one task in one round trip:
    /// each step is checked and done exactly as the [`Request::WriteMemory`],
    /// [`Request::Syscall`], [`Request::SetRegs`] or [`Request::SetSigmask`]
    /// it stands for would be (setuid-mode check of
    /// the task before each step, tasks the step creates traced), in order.
    /// The batch stops after the first system call that returns an error
    /// (`-4095..=-1`); the answer is [`Response::BatchResults`]. A step the
    /// helper cannot do ends the batch with that step's error, the steps
    /// before it done.
    SyscallBatch {
        /// Traced task.
        pid: Pid,
        /// The steps, 1 to [`MAX_BATCH_STEPS`]; their writes and register
        /// sets together at most [`MAX_MEM_IO`] bytes ([`BatchStep::bytes`]).
        steps: Vec<BatchStep>,
    },
}

/// The operation a failing request was doing, so the frontend can say which
/// step went wrong without the helper sending prose.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or out of range (a bound above was exceeded).
    BadRequest,
    /// Handshake magic or version mismatch.
    Version,
    /// The pid is not traced on this channel.
    NotTraced,
    /// The pid is already traced on this channel.
    AlreadyTraced,
    /// The caller may not act on this task (setuid mode checks).
    Denied,
    /// The task has exited or been replaced.
    Gone,
    /// `pidfd_open(2)` failed.
    PidfdOpen,
    /// `PTRACE_SEIZE` failed.
    Seize,
    /// `PTRACE_INTERRUPT` or waiting for the stop failed.
    Interrupt,
    /// The task stopped in a way the helper did not ask for.
    UnexpectedStop,
    /// Reading or writing registers failed.
    Regs,
    /// Reading or writing the signal mask failed.
    Sigmask,
    /// `PTRACE_PEEKSIGINFO` failed.
    Siginfo,
    /// `PTRACE_GET_RSEQ_CONFIGURATION` failed.
    Rseq,
    /// The gadget address does not hold a `syscall` instruction.
    BadGadget,
    /// Running the injected system call failed (not its return value).
    Syscall,
    /// Reading task memory failed.
    MemRead,
    /// Writing task memory failed.
    MemWrite,
    /// Writing to the image descriptor failed.
    ImageWrite,
    /// Creating the stub failed (`clone3`, PID taken, ...).
    Clone,
    /// Detaching, stopping or killing failed.
    Release,
    /// Waiting for the task failed.
    Wait,
    /// Taking the task's pipe (pidfd_getfd) failed, or it is not a pipe.
    Pipe,
}

/// A response from the helper.
// Responses live for one round trip; boxing the registers would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello {
        /// The helper's [`PROTOCOL_VERSION`].
        version: u32,
        /// Real uid of the helper's caller; 0 means full (root) mode.
        caller_uid: u32,
    },
    /// Done, nothing to return.
    Ok,
    /// A stub was created and is stopped.
    Stub {
        /// Address of a `syscall` instruction in the stub, already set as
        /// its gadget.
        gadget: u64,
    },
    /// Registers of a task.
    Regs {
        /// General registers.
        regs: UserRegs,
        /// XSAVE area (`NT_X86_XSTATE`), as many bytes as the kernel gave.
        xstate: Vec<u8>,
    },
    /// A signal mask.
    Sigmask(u64),
    /// Raw `siginfo_t` records of [`SIGINFO_SIZE`] bytes each.
    Siginfo(Vec<Vec<u8>>),
    /// The rseq registration.
    Rseq(RseqConfig),
    /// The raw return value of an injected system call (`-errno` on failure).
    SyscallResult(i64),
    /// Bytes read from task memory.
    Memory(Vec<u8>),
    /// Bytes written to the image descriptor by [`Request::DumpPages`].
    PagesWritten(u64),
    /// How a waited-for task ended.
    Exit(ExitStatus),
    /// The request failed.
    Error {
        /// Which step failed.
        kind: ErrorKind,
        /// The errno of the failing call, 0 if none.
        errno: i32,
    },
    /// Setuid mode: the helper refused to act on the task, which was left
    /// untouched (or let go, for [`DenyReason::Exec`]). The frontend prints
    /// `pid N: ` followed by the reason's `Display`.
    Denied {
        /// Why.
        reason: DenyReason,
    },
    /// Answer to [`Request::TakePipe`]: the pipe end is the one descriptor
    /// sent with this frame.
    Pipe,
    /// Answer to [`Request::SyscallBatch`]: one value per step done, in
    /// order (0 for a write, a register or a mask set, the raw return value
    /// of a system call). Fewer
    /// values than steps: the last one is the error that stopped the batch.
    BatchResults(Vec<i64>),
}

/// Which of a task's user or group IDs (see credentials(7)).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdField {
    /// Real ID.
    Real,
    /// Effective ID.
    Effective,
    /// Saved set-ID.
    Saved,
}

/// A capability set of a task (see capabilities(7)). The bounding set is
/// not one: it only limits.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapSet {
    /// `CapInh`.
    Inheritable,
    /// `CapPrm`.
    Permitted,
    /// `CapEff`.
    Effective,
    /// `CapAmb`.
    Ambient,
}

/// Why the helper, running setuid for a user, refuses to act on a task.
/// Checked on every request that names a task (SECURITY.md).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// A user ID of the task differs from the caller's real uid.
    Uid {
        /// Which one.
        which: IdField,
        /// The task's.
        target: u32,
        /// The caller's.
        caller: u32,
    },
    /// A group ID of the task differs from the caller's real gid.
    Gid {
        /// Which one.
        which: IdField,
        /// The task's.
        target: u32,
        /// The caller's.
        caller: u32,
    },
    /// The task has a bit set in a capability set.
    Caps {
        /// Which set.
        set: CapSet,
        /// Its bits.
        mask: u64,
    },
    /// The task executed a new program while traced; the helper let it go.
    Exec,
    /// The task is not dumpable (`PR_SET_DUMPABLE` 0, or it changed
    /// credentials), so its owner could not ptrace it either.
    NotDumpable,
}

impl DenyReason {
    /// The first of the three IDs `(real, effective, saved)` of a task that
    /// differs from `caller`, as a `Uid` reason.
    pub fn uid(ids: [u32; 3], caller: u32) -> Option<DenyReason> {
        first_differing(ids, caller).map(|(which, target)| DenyReason::Uid {
            which,
            target,
            caller,
        })
    }

    /// As [`DenyReason::uid`] for group IDs.
    pub fn gid(ids: [u32; 3], caller: u32) -> Option<DenyReason> {
        first_differing(ids, caller).map(|(which, target)| DenyReason::Gid {
            which,
            target,
            caller,
        })
    }
}

fn first_differing(ids: [u32; 3], caller: u32) -> Option<(IdField, u32)> {
    [IdField::Real, IdField::Effective, IdField::Saved]
        .into_iter()
        .zip(ids)
        .find(|&(_, id)| id != caller)
}

impl std::fmt::Display for IdField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdField::Real => "real",
            IdField::Effective => "effective",
            IdField::Saved => "saved",
        })
    }
}

impl std::fmt::Display for CapSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CapSet::Inheritable => "inheritable",
            CapSet::Permitted => "permitted",
            CapSet::Effective => "effective",
            CapSet::Ambient => "ambient",
        })
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DenyReason::Uid {
                which,
                target,
                caller,
            } => write!(f, "{which} uid {target} differs from yours ({caller})"),
            DenyReason::Gid {
                which,
                target,
                caller,
            } => write!(f, "{which} gid {target} differs from yours ({caller})"),
            DenyReason::Caps { set, mask } => {
                write!(f, "holds capabilities ({set} set {mask:#x})")
            }
            DenyReason::Exec => f.write_str("executed a new program while traced and was let go"),
            DenyReason::NotDumpable => {
                f.write_str("is not dumpable (it changed credentials or cleared PR_SET_DUMPABLE)")
            }
        }
    }
}

impl Request {
    /// Short name of the request, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Seize { .. } => "seize",
            Request::CreateStub { .. } => "create-stub",
            Request::GetRegs { .. } => "get-regs",
            Request::SetRegs { .. } => "set-regs",
            Request::GetSigmask { .. } => "get-sigmask",
            Request::SetSigmask { .. } => "set-sigmask",
            Request::PeekSiginfo { .. } => "peek-siginfo",
            Request::GetRseq { .. } => "get-rseq",
            Request::SetGadget { .. } => "set-gadget",
            Request::Syscall { .. } => "syscall",
            Request::ReadMemory { .. } => "read-memory",
            Request::WriteMemory { .. } => "write-memory",
            Request::DumpPages { .. } => "dump-pages",
            Request::Release { .. } => "release",
            Request::WaitExit { .. } => "wait-exit",
            Request::SetNextPid { .. } => "set-next-pid",
            Request::TakePipe { .. } => "take-pipe",
            Request::SyscallBatch { .. } => "syscall-batch",
        }
    }

    /// The task a request acts on, if any.
    pub fn pid(&self) -> Option<Pid> {
        match self {
            Request::Hello { .. } => None,
            Request::Seize { pid }
            | Request::CreateStub { pid, .. }
            | Request::GetRegs { pid }
            | Request::SetRegs { pid, .. }
            | Request::GetSigmask { pid }
            | Request::SetSigmask { pid, .. }
            | Request::PeekSiginfo { pid, .. }
            | Request::GetRseq { pid }
            | Request::SetGadget { pid, .. }
            | Request::Syscall { pid, .. }
            | Request::ReadMemory { pid, .. }
            | Request::WriteMemory { pid, .. }
            | Request::DumpPages { pid, .. }
            | Request::Release { pid, .. }
            | Request::WaitExit { pid }
            | Request::SetNextPid { parent: pid, .. }
            | Request::TakePipe { pid, .. }
            | Request::SyscallBatch { pid, .. } => Some(*pid),
        }
    }

    /// Check the bounds every request must respect (sizes and counts above).
    /// The helper calls this before acting; the frontend before sending.
    pub fn check_bounds(&self) -> Result<(), &'static str> {
        if let Some(pid) = self.pid() {
            if pid <= 0 {
                return Err("pid must be positive");
            }
        }
        match self {
            Request::CreateStub { fds, .. } => {
                if fds.len() > MAX_FDS_PER_FRAME {
                    return Err("too many descriptors");
                }
                if fds.iter().any(|&fd| !(0..1 << 20).contains(&fd)) {
                    return Err("descriptor number out of range");
                }
                let mut sorted = fds.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if sorted.len() != fds.len() {
                    return Err("descriptor number given twice");
                }
            }
            Request::SetRegs {
                xstate: Some(x), ..
            } if x.len() > MAX_XSTATE => {
                return Err("xstate too large");
            }
            Request::PeekSiginfo { count, .. } if *count > MAX_SIGINFO => {
                return Err("too many siginfo records asked");
            }
            Request::ReadMemory { addr, len, .. } => {
                if *len > MAX_MEM_IO {
                    return Err("memory read too large");
                }
                check_range(*addr, u64::from(*len))?;
            }
            Request::WriteMemory { addr, data, .. } => {
                if data.len() > MAX_MEM_IO as usize {
                    return Err("memory write too large");
                }
                check_range(*addr, data.len() as u64)?;
            }
            Request::SetGadget { addr, .. } => check_range(*addr, 2)?,
            Request::SetNextPid { pid, .. } if *pid <= 1 => {
                return Err("next pid must be above 1");
            }
            Request::TakePipe { pipe_fd, .. } if !(0..1 << 20).contains(pipe_fd) => {
                return Err("descriptor number out of range");
            }
            Request::SyscallBatch { steps, .. } => {
                if steps.is_empty() {
                    return Err("empty batch");
                }
                if steps.len() > MAX_BATCH_STEPS {
                    return Err("too many steps in a batch");
                }
                let mut written = 0usize;
                for st in steps {
                    written = written.saturating_add(st.bytes());
                    if written > MAX_MEM_IO as usize {
                        return Err("batch writes too large");
                    }
                    match st {
                        BatchStep::Write { addr, data } => check_range(*addr, data.len() as u64)?,
                        BatchStep::SetRegs {
                            xstate: Some(x), ..
                        } if x.len() > MAX_XSTATE => return Err("xstate too large"),
                        _ => {}
                    }
                }
            }
            Request::DumpPages { runs, .. } => {
                if runs.len() > MAX_PAGE_RUNS {
                    return Err("too many page runs");
                }
                for r in runs {
                    if r.addr % 4096 != 0 || r.len % 4096 != 0 || r.len == 0 {
                        return Err("page run not page aligned");
                    }
                    check_range(r.addr, r.len)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn check_range(addr: u64, len: u64) -> Result<(), &'static str> {
    match addr.checked_add(len) {
        Some(end) if end <= TASK_SIZE => Ok(()),
        _ => Err("address range outside user space"),
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ErrorKind::BadRequest => "malformed or out-of-range request",
            ErrorKind::Version => "protocol version mismatch",
            ErrorKind::NotTraced => "task is not traced by this helper",
            ErrorKind::AlreadyTraced => "task is already traced by this helper",
            ErrorKind::Denied => "permission denied",
            ErrorKind::Gone => "task has exited",
            ErrorKind::PidfdOpen => "pidfd_open failed",
            ErrorKind::Seize => "PTRACE_SEIZE failed",
            ErrorKind::Interrupt => "stopping the task (PTRACE_INTERRUPT) failed",
            ErrorKind::UnexpectedStop => "task stopped unexpectedly",
            ErrorKind::Regs => "reading or writing registers failed",
            ErrorKind::Sigmask => "reading or writing the signal mask failed",
            ErrorKind::Siginfo => "PTRACE_PEEKSIGINFO failed",
            ErrorKind::Rseq => "PTRACE_GET_RSEQ_CONFIGURATION failed",
            ErrorKind::BadGadget => "no syscall instruction at the gadget address",
            ErrorKind::Syscall => "running an injected system call failed",
            ErrorKind::MemRead => "reading task memory failed",
            ErrorKind::MemWrite => "writing task memory failed",
            ErrorKind::ImageWrite => "writing pages to the image failed",
            ErrorKind::Clone => "creating the process (clone3 with set_tid) failed",
            ErrorKind::Release => "releasing the task failed",
            ErrorKind::Wait => "waiting for the task failed",
            ErrorKind::Pipe => "taking the task's pipe failed",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_reasons_read_as_sentences() {
        let r = DenyReason::uid([1000, 0, 1000], 1000).unwrap();
        assert_eq!(r.to_string(), "effective uid 0 differs from yours (1000)");
        let r = DenyReason::gid([1000, 1000, 5], 1000).unwrap();
        assert_eq!(r.to_string(), "saved gid 5 differs from yours (1000)");
        assert_eq!(DenyReason::uid([7, 7, 7], 7), None);
        let r = DenyReason::Caps {
            set: CapSet::Permitted,
            mask: 0x2000,
        };
        assert_eq!(r.to_string(), "holds capabilities (permitted set 0x2000)");
    }

    fn batch(steps: Vec<BatchStep>) -> Request {
        Request::SyscallBatch { pid: 7, steps }
    }

    fn call(nr: u64) -> BatchStep {
        BatchStep::Syscall {
            nr,
            args: [u64::MAX; 6],
        }
    }

    #[test]
    fn batch_is_appended_after_the_existing_messages() {
        // Requests 0..=17 are Hello..TakePipe, responses 0..=13 Hello..Pipe.
        let r = postcard::to_stdvec(&batch(vec![
            BatchStep::Write {
                addr: 0x1000,
                data: vec![0xaa],
            },
            BatchStep::Syscall {
                nr: 39,
                args: [1, 2, 3, 4, 5, 6],
            },
        ]))
        .unwrap();
        assert_eq!(
            r,
            // pid 7 as a zigzag varint is 14; 0x1000 is [0x80, 0x20].
            vec![18, 14, 2, 0, 0x80, 0x20, 1, 0xaa, 1, 39, 1, 2, 3, 4, 5, 6]
        );
        let a = postcard::to_stdvec(&Response::BatchResults(vec![0, -22])).unwrap();
        assert_eq!(a, vec![14, 2, 0, 43]);
        // Steps 0..=1 are Write and Syscall; SetRegs and SetSigmask follow.
        let st = postcard::to_stdvec(&BatchStep::SetSigmask { mask: 5 }).unwrap();
        assert_eq!(st, vec![3, 5]);
        let st = postcard::to_stdvec(&BatchStep::SetRegs {
            regs: UserRegs::default(),
            xstate: None,
        })
        .unwrap();
        assert_eq!(st[0], 2);
        assert_eq!(st.len(), 1 + 27 + 1);
        assert_eq!(batch(vec![call(39)]).name(), "syscall-batch");
        assert_eq!(batch(vec![call(39)]).pid(), Some(7));
    }

    #[test]
    fn batch_bounds() {
        let ok = |r: &Request| r.check_bounds();
        assert_eq!(ok(&batch(vec![call(0); MAX_BATCH_STEPS])), Ok(()));
        assert_eq!(ok(&batch(vec![])), Err("empty batch"));
        assert_eq!(
            ok(&batch(vec![call(0); MAX_BATCH_STEPS + 1])),
            Err("too many steps in a batch")
        );
        let write = |addr: u64, len: usize| BatchStep::Write {
            addr,
            data: vec![1; len],
        };
        let half = MAX_MEM_IO as usize / 2;
        assert_eq!(
            ok(&batch(vec![write(0x1000, half), write(0x1000, half)])),
            Ok(())
        );
        assert_eq!(
            ok(&batch(vec![
                write(0x1000, half),
                call(1),
                write(0x1000, half + 1)
            ])),
            Err("batch writes too large")
        );
        assert_eq!(
            ok(&batch(vec![call(1), write(TASK_SIZE - 1, 2)])),
            Err("address range outside user space")
        );
        assert_eq!(
            ok(&batch(vec![write(u64::MAX, 1)])),
            Err("address range outside user space")
        );
        let zero = Request::SyscallBatch {
            pid: 0,
            steps: vec![call(1)],
        };
        assert_eq!(ok(&zero), Err("pid must be positive"));
        let regs = |len: usize| BatchStep::SetRegs {
            regs: UserRegs::default(),
            xstate: Some(vec![0; len]),
        };
        assert_eq!(ok(&batch(vec![call(1), regs(MAX_XSTATE)])), Ok(()));
        assert_eq!(
            ok(&batch(vec![regs(MAX_XSTATE + 1)])),
            Err("xstate too large")
        );
        // Register sets count against the bytes of the batch.
        assert_eq!(
            ok(&batch(vec![regs(MAX_XSTATE), regs(MAX_XSTATE)])),
            Err("batch writes too large")
        );
        let n = MAX_MEM_IO as usize / BATCH_REGS_BYTES;
        let bare = BatchStep::SetRegs {
            regs: UserRegs::default(),
            xstate: None,
        };
        assert_eq!(ok(&batch(vec![bare.clone(); n])), Ok(()));
        assert_eq!(ok(&batch(vec![bare; n + 1])), Err("batch writes too large"));
        assert_eq!(
            ok(&batch(vec![
                BatchStep::SetSigmask { mask: !0 };
                MAX_BATCH_STEPS
            ])),
            Ok(())
        );
    }

    #[test]
    fn largest_batches_fit_a_frame() {
        // Every step a call with the longest encodings, or one write of all
        // the bytes allowed among them, or many small writes.
        let mut big = vec![call(u64::MAX); MAX_BATCH_STEPS - 1];
        big.push(BatchStep::Write {
            addr: TASK_SIZE - u64::from(MAX_MEM_IO),
            data: vec![0xff; MAX_MEM_IO as usize],
        });
        let small: Vec<BatchStep> = (0..MAX_BATCH_STEPS)
            .map(|_| BatchStep::Write {
                addr: TASK_SIZE - 0x1000,
                data: vec![0xff; MAX_MEM_IO as usize / MAX_BATCH_STEPS],
            })
            .collect();
        // Register sets with the largest values, and the largest XSAVE
        // area beside the rest of the byte budget in writes.
        let max_regs = UserRegs {
            r15: u64::MAX,
            r14: u64::MAX,
            r13: u64::MAX,
            r12: u64::MAX,
            rbp: u64::MAX,
            rbx: u64::MAX,
            r11: u64::MAX,
            r10: u64::MAX,
            r9: u64::MAX,
            r8: u64::MAX,
            rax: u64::MAX,
            rcx: u64::MAX,
            rdx: u64::MAX,
            rsi: u64::MAX,
            rdi: u64::MAX,
            orig_rax: u64::MAX,
            rip: u64::MAX,
            cs: u64::MAX,
            eflags: u64::MAX,
            rsp: u64::MAX,
            ss: u64::MAX,
            fs_base: u64::MAX,
            gs_base: u64::MAX,
            ds: u64::MAX,
            es: u64::MAX,
            fs: u64::MAX,
            gs: u64::MAX,
        };
        let regs_only = vec![
            BatchStep::SetRegs {
                regs: max_regs,
                xstate: Some(vec![]),
            };
            MAX_MEM_IO as usize / BATCH_REGS_BYTES
        ];
        let mut mixed = vec![call(u64::MAX); MAX_BATCH_STEPS - 2];
        mixed.push(BatchStep::SetRegs {
            regs: max_regs,
            xstate: Some(vec![0xff; MAX_XSTATE]),
        });
        mixed.push(BatchStep::Write {
            addr: 0x1000,
            data: vec![0xff; MAX_MEM_IO as usize - MAX_XSTATE - BATCH_REGS_BYTES],
        });
        for steps in [
            vec![call(u64::MAX); MAX_BATCH_STEPS],
            big,
            small,
            regs_only,
            mixed,
        ] {
            let r = batch(steps);
            assert_eq!(r.check_bounds(), Ok(()));
            let f = crate::frame::encode(&r).unwrap();
            assert_eq!(crate::frame::decode::<Request>(&f), Ok(r));
        }
        let answer = Response::BatchResults(vec![i64::MIN; MAX_BATCH_STEPS]);
        crate::frame::encode(&answer).unwrap();
    }

    #[test]
    fn denied_is_appended_after_the_existing_responses() {
        // Variant 11 is `Error`; `Denied` must be 12 so old encodings stay.
        let e = postcard::to_stdvec(&Response::Error {
            kind: ErrorKind::Gone,
            errno: 0,
        })
        .unwrap();
        assert_eq!(e[0], 11);
        let d = postcard::to_stdvec(&Response::Denied {
            reason: DenyReason::Exec,
        })
        .unwrap();
        assert_eq!(d, vec![12, 3]);
    }
}
