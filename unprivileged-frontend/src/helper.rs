//! Starting `criu-helper` and talking to it: one typed method per request
//! of `shared_ipc::Request`. The helper is found next to this binary, in
//! `../libexec/criu/`, at the build-time path `CRIU_HELPER_PATH`, or where
//! the `CRIU_HELPER` environment variable says (checked first).

use shared_ipc::{
    BatchStep, Channel, ChannelError, DenyReason, ErrorKind, ExitStatus, PageRun, Pid, ReleaseMode,
    Request, Response, RseqConfig, UserRegs, HELLO_MAGIC, MAX_MEM_IO, MAX_PAGE_RUNS, MAX_SIGINFO,
    PROTOCOL_VERSION,
};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Why talking to the helper failed.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// No helper binary was found.
    #[error("cannot find criu-helper (looked in: {0}); set CRIU_HELPER=/path/to/criu-helper")]
    NotFound(String),
    /// The helper could not be started.
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The helper binary.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The channel broke (the helper died or sent a bad frame).
    #[error("criu-helper channel: {0}")]
    Channel(#[from] ChannelError),
    /// A request failed in the helper.
    #[error("{}", describe(.op, *.pid, *.kind, *.errno))]
    Failed {
        /// Request name.
        op: &'static str,
        /// Task it was about.
        pid: Option<Pid>,
        /// What the helper was doing.
        kind: ErrorKind,
        /// errno of the failing call, 0 if none.
        errno: i32,
    },
    /// The helper refused to act on a task (setuid mode: it is not the
    /// caller's, holds capabilities or is not dumpable, or it exec'd while
    /// traced). A task refused at `Seize` was never stopped; a task that
    /// fails the check on a later request is no longer traced (a target is
    /// detached as it is, a stub killed); a task that exec'd (`Exec`) was
    /// let go running its new program. Either way the helper answers
    /// `NotTraced` for it afterwards.
    #[error("pid {pid}: {reason}; {}", deny_hint(reason))]
    Denied {
        /// The task.
        pid: Pid,
        /// Why.
        reason: DenyReason,
    },
    /// The helper answered with the wrong kind of response.
    #[error("criu-helper answered {got} to {op}")]
    Unexpected {
        /// Request name.
        op: &'static str,
        /// What came back.
        got: String,
    },
}

fn describe(op: &str, pid: Option<Pid>, kind: ErrorKind, errno: i32) -> String {
    let who = pid.map(|p| format!("pid {p}: ")).unwrap_or_default();
    let mut s = if errno != 0 {
        let e = nix::errno::Errno::from_raw(errno);
        format!("{who}{kind} ({op}): {}", e.desc())
    } else {
        format!("{who}{kind} ({op})")
    };
    if kind == ErrorKind::Seize && errno == libc::EPERM {
        s.push_str(
            "; the kernel does not let this task be traced (init, a kernel thread, or one \
             protected by a security module); choose another process",
        );
    }
    s
}

/// What the user can do about a refusal.
fn deny_hint(reason: &DenyReason) -> &'static str {
    match reason {
        DenyReason::Exec => "it started another program while being worked on; try again",
        _ => {
            "with the setuid helper you may only checkpoint your own processes that hold no \
             capabilities; run criu as root for others"
        }
    }
}

type HResult<T> = Result<T, HelperError>;

/// A running helper and the channel to it.
pub struct Helper {
    ch: Channel<Request, Response>,
    child: Child,
    /// Requests sent so far, by name (logged at `-v4` by [`Helper::finish`]).
    sent: std::collections::BTreeMap<&'static str, u64>,
    /// Real uid of the caller as the helper sees it (0: root mode).
    pub caller_uid: u32,
}

/// Where to look for the helper, in order.
pub fn candidate_paths() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("CRIU_HELPER") {
        v.push(PathBuf::from(p));
        return v;
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            v.push(dir.join("criu-helper"));
            v.push(dir.join("../libexec/criu/criu-helper"));
        }
    }
    if let Some(p) = option_env!("CRIU_HELPER_PATH") {
        v.push(PathBuf::from(p));
    }
    v
}

/// The helper binary that will be used.
///
/// Errors: [`HelperError::NotFound`] listing the places looked at.
pub fn locate() -> HResult<PathBuf> {
    let c = candidate_paths();
    c.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        HelperError::NotFound(
            c.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        )
    })
}

impl Helper {
    /// Start the helper with its channel end at fd 3 and do the handshake.
    ///
    /// Errors: not found, spawn failure, or a failed handshake.
    pub fn spawn() -> HResult<Helper> {
        let path = locate()?;
        Self::spawn_at(&path)
    }

    /// Like [`Helper::spawn`] with an explicit binary.
    ///
    /// Errors: spawn failure or a failed handshake.
    pub fn spawn_at(path: &Path) -> HResult<Helper> {
        let (ours, theirs) = shared_ipc::seqpacket_pair().map_err(|e| HelperError::Spawn {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        let mut cmd = Command::new(path);
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        crate::sys::pass_fd_as(&mut cmd, theirs, shared_ipc::HELPER_CHANNEL_FD);
        let child = cmd.spawn().map_err(|source| HelperError::Spawn {
            path: path.to_path_buf(),
            source,
        })?;
        // Close our copy of the helper's end now: a helper that exits
        // before answering must read as end of stream, not a wait forever.
        drop(cmd);
        let mut h = Helper {
            ch: Channel::new(ours),
            child,
            sent: Default::default(),
            caller_uid: u32::MAX,
        };
        match h.call(
            Request::Hello {
                magic: HELLO_MAGIC,
                version: PROTOCOL_VERSION,
            },
            &[],
        )? {
            Response::Hello {
                version,
                caller_uid,
            } if version == PROTOCOL_VERSION => {
                // The helper's caller is this process: setuid mode is
                // decided in the frontend from the same real uid (image
                // credential check), so the two must agree.
                let ours = nix::unistd::getuid().as_raw();
                if caller_uid != ours {
                    return Err(HelperError::Unexpected {
                        op: "hello",
                        got: format!("caller uid {caller_uid}, but criu runs as uid {ours}"),
                    });
                }
                h.caller_uid = caller_uid;
                crate::debug!("helper {} started, caller uid {caller_uid}", path.display());
                Ok(h)
            }
            other => Err(HelperError::Unexpected {
                op: "hello",
                got: format!("{other:?}"),
            }),
        }
    }

    fn call(&mut self, req: Request, fds: &[BorrowedFd<'_>]) -> HResult<Response> {
        self.call_fds(req, fds).map(|(r, _)| r)
    }

    /// As `call`, also returning the descriptors sent with the answer.
    fn call_fds(
        &mut self,
        req: Request,
        fds: &[BorrowedFd<'_>],
    ) -> HResult<(Response, Vec<OwnedFd>)> {
        let op = req.name();
        let pid = req.pid();
        if let Err(why) = req.check_bounds() {
            return Err(HelperError::Unexpected {
                op,
                got: format!("a request the frontend refused to send: {why}"),
            });
        }
        *self.sent.entry(op).or_default() += 1;
        self.ch.send(&req, fds)?;
        let (resp, got) = self.ch.recv()?;
        match resp {
            Response::Error { kind, errno } => Err(HelperError::Failed {
                op,
                pid,
                kind,
                errno,
            }),
            Response::Denied { reason } => Err(HelperError::Denied {
                pid: pid.unwrap_or(0),
                reason,
            }),
            r => Ok((r, got)),
        }
    }

    fn expect_ok(&mut self, req: Request, fds: &[BorrowedFd<'_>]) -> HResult<()> {
        let op = req.name();
        match self.call(req, fds)? {
            Response::Ok => Ok(()),
            other => Err(unexpected(op, other)),
        }
    }

    /// Seize and stop a live task (see `Request::Seize`).
    ///
    /// Errors: the helper's refusal or failure.
    pub fn seize(&mut self, pid: Pid) -> HResult<()> {
        self.expect_ok(Request::Seize { pid }, &[])
    }

    /// Create a stopped stub with PID `pid`; `fds` are (target number,
    /// descriptor) pairs it starts with. Returns the gadget address.
    ///
    /// Errors: the helper's failure (`Clone` with EEXIST when the PID is taken).
    pub fn create_stub(&mut self, pid: Pid, fds: &[(i32, BorrowedFd<'_>)]) -> HResult<u64> {
        let nums = fds.iter().map(|f| f.0).collect();
        let bfds: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.1).collect();
        match self.call(Request::CreateStub { pid, fds: nums }, &bfds)? {
            Response::Stub { gadget } => Ok(gadget),
            other => Err(unexpected("create-stub", other)),
        }
    }

    /// Registers and XSAVE area.
    ///
    /// Errors: the helper's failure.
    pub fn get_regs(&mut self, pid: Pid) -> HResult<(UserRegs, Vec<u8>)> {
        match self.call(Request::GetRegs { pid }, &[])? {
            Response::Regs { regs, xstate } => Ok((regs, xstate)),
            other => Err(unexpected("get-regs", other)),
        }
    }

    /// Set registers and optionally the XSAVE area.
    ///
    /// Errors: the helper's failure.
    pub fn set_regs(&mut self, pid: Pid, regs: UserRegs, xstate: Option<Vec<u8>>) -> HResult<()> {
        self.expect_ok(Request::SetRegs { pid, regs, xstate }, &[])
    }

    /// Blocked-signal mask.
    ///
    /// Errors: the helper's failure.
    pub fn get_sigmask(&mut self, pid: Pid) -> HResult<u64> {
        match self.call(Request::GetSigmask { pid }, &[])? {
            Response::Sigmask(m) => Ok(m),
            other => Err(unexpected("get-sigmask", other)),
        }
    }

    /// Set the blocked-signal mask.
    ///
    /// Errors: the helper's failure.
    pub fn set_sigmask(&mut self, pid: Pid, mask: u64) -> HResult<()> {
        self.expect_ok(Request::SetSigmask { pid, mask }, &[])
    }

    /// Every queued signal of one queue (raw 128-byte siginfos).
    ///
    /// Errors: the helper's failure.
    pub fn peek_siginfo(&mut self, pid: Pid, shared: bool) -> HResult<Vec<Vec<u8>>> {
        let mut all = Vec::new();
        loop {
            let req = Request::PeekSiginfo {
                pid,
                shared,
                offset: all.len() as u32,
                count: MAX_SIGINFO,
            };
            match self.call(req, &[])? {
                Response::Siginfo(v) => {
                    let n = v.len();
                    all.extend(v);
                    if n < MAX_SIGINFO as usize || all.len() > 1 << 20 {
                        return Ok(all);
                    }
                }
                other => return Err(unexpected("peek-siginfo", other)),
            }
        }
    }

    /// rseq registration.
    ///
    /// Errors: the helper's failure.
    pub fn get_rseq(&mut self, pid: Pid) -> HResult<RseqConfig> {
        match self.call(Request::GetRseq { pid }, &[])? {
            Response::Rseq(c) => Ok(c),
            other => Err(unexpected("get-rseq", other)),
        }
    }

    /// Use the `syscall` instruction at `addr` for injected calls.
    ///
    /// Errors: `BadGadget` when the bytes there are not `0f 05`.
    pub fn set_gadget(&mut self, pid: Pid, addr: u64) -> HResult<()> {
        self.expect_ok(Request::SetGadget { pid, addr }, &[])
    }

    /// Make `pid` the next PID the kernel hands out, for a fork or clone
    /// injected next into the stub `parent` (setuid mode, where the stub
    /// may not use `set_tid`).
    pub fn set_next_pid(&mut self, parent: Pid, pid: Pid) -> HResult<()> {
        self.expect_ok(Request::SetNextPid { parent, pid }, &[])
    }

    /// Run one system call in the task; returns the raw result (`-errno`).
    ///
    /// Errors: the helper could not run it.
    pub fn syscall(&mut self, pid: Pid, nr: i64, args: [u64; 6]) -> HResult<i64> {
        match self.call(
            Request::Syscall {
                pid,
                nr: nr as u64,
                args,
            },
            &[],
        )? {
            Response::SyscallResult(r) => Ok(r),
            other => Err(unexpected("syscall", other)),
        }
    }

    /// Run the steps in one round trip (see `Request::SyscallBatch`): at
    /// most `MAX_BATCH_STEPS`, their writes at most `MAX_MEM_IO` bytes
    /// together. Returns one value per step done (0 for a write, the raw
    /// result of a call); fewer than the steps when a call failed, which is
    /// then the last value.
    ///
    /// Errors: the helper could not do a step.
    pub fn syscall_batch(&mut self, pid: Pid, steps: Vec<BatchStep>) -> HResult<Vec<i64>> {
        let n = steps.len();
        match self.call(Request::SyscallBatch { pid, steps }, &[])? {
            Response::BatchResults(r) if !r.is_empty() && r.len() <= n => Ok(r),
            other => Err(unexpected("syscall-batch", other)),
        }
    }

    /// Read `len` bytes of task memory (any length; split into requests).
    ///
    /// Errors: the helper's failure.
    pub fn read_memory(&mut self, pid: Pid, addr: u64, len: usize) -> HResult<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let n = (len - out.len()).min(MAX_MEM_IO as usize);
            match self.call(
                Request::ReadMemory {
                    pid,
                    addr: addr + out.len() as u64,
                    len: n as u32,
                },
                &[],
            )? {
                Response::Memory(m) if m.len() == n => out.extend(m),
                other => return Err(unexpected("read-memory", other)),
            }
        }
        Ok(out)
    }

    /// Write task memory (any length; split into requests).
    ///
    /// Errors: the helper's failure.
    pub fn write_memory(&mut self, pid: Pid, addr: u64, data: &[u8]) -> HResult<()> {
        for (i, chunk) in data.chunks(MAX_MEM_IO as usize).enumerate() {
            self.expect_ok(
                Request::WriteMemory {
                    pid,
                    addr: addr + (i * MAX_MEM_IO as usize) as u64,
                    data: chunk.to_vec(),
                },
                &[],
            )?;
        }
        Ok(())
    }

    /// Copy runs of task memory to `out` at its current offset; returns the
    /// bytes written.
    ///
    /// Errors: the helper's failure (e.g. `ImageWrite` with ENOSPC).
    pub fn dump_pages(&mut self, pid: Pid, runs: &[PageRun], out: &impl AsFd) -> HResult<u64> {
        let mut total = 0;
        for chunk in runs.chunks(MAX_PAGE_RUNS) {
            match self.call(
                Request::DumpPages {
                    pid,
                    runs: chunk.to_vec(),
                },
                &[out.as_fd()],
            )? {
                Response::PagesWritten(n) => total += n,
                other => return Err(unexpected("dump-pages", other)),
            }
        }
        Ok(total)
    }

    /// A copy of the read end of a pipe of the task (descriptor `pipe_fd`
    /// there), for splicing pages the task vmsplices into it.
    ///
    /// Errors: the helper's failure (`Pipe` when it is not a pipe).
    pub fn take_pipe(&mut self, pid: Pid, pipe_fd: i32) -> HResult<OwnedFd> {
        match self.call_fds(Request::TakePipe { pid, pipe_fd }, &[])? {
            (Response::Pipe, fds) if fds.len() == 1 => {
                Ok(fds.into_iter().next().expect("one descriptor"))
            }
            (other, _) => Err(unexpected("take-pipe", other)),
        }
    }

    /// Stop tracing a task.
    ///
    /// Errors: the helper's failure.
    pub fn release(&mut self, pid: Pid, how: ReleaseMode) -> HResult<()> {
        self.expect_ok(Request::Release { pid, how }, &[])
    }

    /// Wait for a released stub to exit.
    ///
    /// Errors: the helper's failure.
    pub fn wait_exit(&mut self, pid: Pid) -> HResult<ExitStatus> {
        match self.call(Request::WaitExit { pid }, &[])? {
            Response::Exit(s) => Ok(s),
            other => Err(unexpected("wait-exit", other)),
        }
    }

    /// Close the channel and wait for the helper to finish its clean-up.
    pub fn finish(self) {
        let Helper {
            ch,
            mut child,
            sent,
            ..
        } = self;
        let total: u64 = sent.values().sum();
        let each: Vec<String> = sent.iter().map(|(op, n)| format!("{op} {n}")).collect();
        crate::debug!("helper requests: {total} ({})", each.join(", "));
        drop(ch);
        let _ = child.wait();
    }
}

fn unexpected(op: &'static str, got: Response) -> HelperError {
    HelperError::Unexpected {
        op,
        got: format!("{got:?}"),
    }
}
