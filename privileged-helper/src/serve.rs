//! The request loop: one `Request` in, one `Response` out, and the table of
//! tasks this helper traces. Every request is bounds-checked before it is
//! looked at; every failure is a `Response::Error`.

use crate::creds::{check_task, Caller};
use crate::pages;
use crate::ptrace::{self as pt, on, Fail, Kind, LastStop, Tracee};
use crate::seclog::SecLog;
use crate::spawner::Spawner;
use crate::sys;
use nix::errno::Errno;
use nix::sys::ptrace::{self as nixptrace, Options};
use nix::unistd::{getpid, getppid, getuid, Pid};
use shared_ipc::{
    BatchStep, Channel, ChannelError, DenyReason, ErrorKind, ExitStatus, PageRun, ReleaseMode,
    Request, Response, RseqConfig, UserRegs, HELLO_MAGIC, MAX_XSTATE, PROTOCOL_VERSION,
    SIGINFO_SIZE,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// Exit status when the frontend closed the channel.
pub const EXIT_OK: i32 = 0;
/// Exit status after a malformed frame, a failed handshake or a channel error.
pub const EXIT_PROTOCOL: i32 = 1;

/// The helper's state while serving one frontend.
pub struct Server {
    chan: Channel<Response, Request>,
    spawner: Option<Spawner>,
    tracees: BTreeMap<i32, Tracee>,
    released_children: BTreeSet<i32>,
    page_buf: Vec<u8>,
    /// A descriptor to send with the next response (`TakePipe`).
    out_fd: Option<OwnedFd>,
    greeted: bool,
    /// Pids the frontend may never seize: the helper, its parent, the spawner.
    forbidden: [Pid; 3],
    /// Who runs us; a non-root caller means setuid mode.
    caller: Caller,
    /// Security events.
    log: SecLog,
}

/// What the loop does after answering.
enum Next {
    Go,
    Exit,
}

impl Server {
    /// A server on `chan` with its spawner.
    pub fn new(
        chan: Channel<Response, Request>,
        spawner: Spawner,
        caller: Caller,
        log: SecLog,
    ) -> Server {
        let forbidden = [getpid(), getppid(), spawner.pid()];
        Server {
            chan,
            spawner: Some(spawner),
            tracees: BTreeMap::new(),
            released_children: BTreeSet::new(),
            page_buf: Vec::new(),
            out_fd: None,
            greeted: false,
            forbidden,
            caller,
            log,
        }
    }

    /// Serve until end of stream (exit status 0) or a protocol error (1).
    pub fn run(mut self) -> i32 {
        let code = loop {
            let (req, fds) = match self.chan.recv() {
                Ok(x) => x,
                Err(ChannelError::Closed) => break EXIT_OK,
                Err(_) => break EXIT_PROTOCOL,
            };
            let (resp, next) = self.handle(req, fds);
            let out = self.out_fd.take();
            let out: Vec<_> = out.iter().map(AsFd::as_fd).collect();
            if self.chan.send(&resp, &out).is_err() {
                break EXIT_PROTOCOL;
            }
            if let Next::Exit = next {
                break EXIT_PROTOCOL;
            }
        };
        self.cleanup();
        code
    }

    /// Leave nothing behind: targets resumed as they were, stubs killed,
    /// the spawner told to exit.
    fn cleanup(&mut self) {
        let all: Vec<Tracee> = std::mem::take(&mut self.tracees).into_values().collect();
        // Stubs: all are killed first, then waited for, threads before
        // their leaders (a leader is reported only once its threads are).
        for t in all.iter().filter(|t| t.kind == Kind::Stub) {
            let _ = pt::send_kill(t);
        }
        let (threads, leaders): (Vec<&Tracee>, Vec<&Tracee>) =
            all.iter().partition(|t| t.pid != t.tgid);
        for t in threads.into_iter().chain(leaders) {
            let _ = match t.kind {
                Kind::Target => pt::release(t, ReleaseMode::Resume),
                Kind::Stub => pt::wait_dead(t),
            };
            self.log_release(t, "cleanup");
        }
        if let Some(s) = self.spawner.take() {
            s.shutdown();
        }
    }

    fn handle(&mut self, req: Request, fds: Vec<OwnedFd>) -> (Response, Next) {
        if !self.greeted {
            return match req {
                Request::Hello { magic, version }
                    if magic == HELLO_MAGIC && version == PROTOCOL_VERSION && fds.is_empty() =>
                {
                    self.greeted = true;
                    self.log
                        .done("hello", getppid().as_raw(), format_args!("frontend"));
                    let hello = Response::Hello {
                        version: PROTOCOL_VERSION,
                        caller_uid: getuid().as_raw(),
                    };
                    (hello, Next::Go)
                }
                Request::Hello { .. } => (error(Fail::bare(ErrorKind::Version)), Next::Exit),
                _ => (error(Fail::bare(ErrorKind::BadRequest)), Next::Exit),
            };
        }
        let op = req.name();
        let pid = req.pid().unwrap_or(0);
        let resp = match self.dispatch(req, fds) {
            Ok(r) => r,
            Err(f) => {
                if let Some(reason) = f.deny {
                    self.log.refused(op, pid, format_args!("{reason}"));
                }
                error(f)
            }
        };
        (resp, Next::Go)
    }

    fn dispatch(&mut self, req: Request, fds: Vec<OwnedFd>) -> Result<Response, Fail> {
        let bad = Fail::bare(ErrorKind::BadRequest);
        req.check_bounds().map_err(|_| bad)?;
        let fds_wanted = match &req {
            Request::CreateStub { fds, .. } => fds.len(),
            Request::DumpPages { .. } => 1,
            _ => 0,
        };
        if fds.len() != fds_wanted {
            return Err(bad);
        }
        match req {
            Request::Hello { .. } => Err(bad),
            Request::Seize { pid } => self.seize(Pid::from_raw(pid)),
            Request::CreateStub { pid, fds: targets } => {
                self.create_stub(Pid::from_raw(pid), &targets, fds)
            }
            Request::WaitExit { pid } => self.wait_exit(pid),
            Request::SetNextPid { parent, pid } => {
                self.recheck(parent)?;
                match self.tracees.get(&parent) {
                    Some(t) if t.kind == Kind::Stub => {}
                    Some(_) => return Err(bad),
                    None => return Err(not_traced()),
                }
                let spawner = self.spawner.as_mut().ok_or(Fail::bare(ErrorKind::Clone))?;
                spawner
                    .next_pid(Pid::from_raw(pid))
                    .map_err(on(ErrorKind::Clone))?;
                self.log
                    .done("set-next-pid", parent, format_args!("next={pid}"));
                Ok(Response::Ok)
            }
            Request::Release { pid, how } => {
                self.recheck(pid)?;
                let t = self.tracees.remove(&pid).ok_or(not_traced())?;
                if how == ReleaseMode::Kill && t.pid == t.tgid {
                    self.kill_threads_of(&t);
                }
                let r = pt::release(&t, how);
                if t.kind == Kind::Stub && how != ReleaseMode::Kill {
                    self.released_children.insert(pid);
                }
                self.log_release(&t, release_name(how));
                r.map(|()| Response::Ok)
            }
            Request::DumpPages { pid, runs } => {
                self.recheck(pid)?;
                let image = fds.into_iter().next().ok_or(bad)?;
                self.dump_pages(pid, &runs, image)
            }
            Request::TakePipe { pid, pipe_fd } => {
                self.recheck(pid)?;
                let t = self.tracees.get(&pid).ok_or(not_traced())?;
                if t.kind != Kind::Target {
                    return Err(bad);
                }
                let pipe = pages::take_pipe(t.pidfd.as_fd(), pipe_fd)?;
                // The pidfd names a PID, not a program: if an untraced thread
                // exec'd since the check, the PID now belongs to it (see
                // pages::dump). Only hand the pipe over if the PID is still
                // our stopped tracee.
                if sys::get_sigmask(t.pid).is_err() {
                    return Err(Fail::bare(ErrorKind::Gone));
                }
                self.out_fd = Some(pipe);
                self.log
                    .done("take-pipe", pid, format_args!("fd={pipe_fd}"));
                Ok(Response::Pipe)
            }
            Request::SyscallBatch { pid, steps } => self.batch(pid, steps),
            other => self.on_traced(other),
        }
    }

    /// A request that acts on one traced task only (`on_tracee`): the task
    /// is checked again first; tasks the request created are traced after.
    fn on_traced(&mut self, req: Request) -> Result<Response, Fail> {
        let pid = req.pid().ok_or(Fail::bare(ErrorKind::BadRequest))?;
        self.recheck(pid)?;
        let t = self.tracees.get_mut(&pid).ok_or(not_traced())?;
        let r = on_tracee(t, req);
        let born = std::mem::take(&mut t.new_tasks);
        let gadget = t.gadget;
        for child in born {
            self.adopt(child, gadget);
        }
        if let Err(f) = r {
            if f.lost_task() {
                self.tracees.remove(&pid);
            }
            if f.deny == Some(DenyReason::Exec) {
                self.log.refused("exec", pid, format_args!("let go"));
            }
        }
        r
    }

    /// `Request::SyscallBatch`: each step is the `WriteMemory`, `Syscall`,
    /// `SetRegs` or `SetSigmask` request it stands for, run through
    /// [`Server::on_traced`] like one sent alone (bounds were checked for
    /// the whole batch). Stops after the first call that returns an error;
    /// a failing step fails the batch.
    fn batch(&mut self, pid: i32, steps: Vec<BatchStep>) -> Result<Response, Fail> {
        let mut results = Vec::with_capacity(steps.len());
        for step in steps {
            let req = match step {
                BatchStep::Write { addr, data } => Request::WriteMemory { pid, addr, data },
                BatchStep::Syscall { nr, args } => Request::Syscall { pid, nr, args },
                BatchStep::SetRegs { regs, xstate } => Request::SetRegs { pid, regs, xstate },
                BatchStep::SetSigmask { mask } => Request::SetSigmask { pid, mask },
            };
            let v = match self.on_traced(req)? {
                Response::Ok => 0,
                Response::SyscallResult(v) => v,
                _ => return Err(Fail::bare(ErrorKind::BadRequest)),
            };
            results.push(v);
            if (-4095..0).contains(&v) {
                break;
            }
        }
        Ok(Response::BatchResults(results))
    }

    /// Setuid mode: check a traced task again before acting on it (the
    /// task is pinned by its pidfd). A task that no longer passes is let go
    /// as it is (a stub is killed: it is an unfinished restore of ours) and
    /// forgotten. Root callers pass at once.
    fn recheck(&mut self, pid: i32) -> Result<(), Fail> {
        let Some(t) = self.tracees.get(&pid) else {
            return Ok(());
        };
        let Err(f) = check_task(t.pid, &t.pidfd, &self.caller) else {
            return Ok(());
        };
        if let Some(t) = self.tracees.remove(&pid) {
            if f.deny.is_some() {
                let _ = match t.kind {
                    Kind::Target => nixptrace::detach(t.pid, None).map_err(on(ErrorKind::Release)),
                    Kind::Stub => pt::kill_and_wait(&t),
                };
            }
        }
        Err(f)
    }

    fn log_release(&mut self, t: &Tracee, how: &str) {
        let kind = match t.kind {
            Kind::Target => "target",
            Kind::Stub => "stub",
        };
        self.log.done(
            "release",
            t.pid.as_raw(),
            format_args!(
                "{kind} how={how} syscalls_injected={} memory_writes={}",
                t.injected, t.writes
            ),
        );
    }

    /// `Request::Seize`: see ptrace(2), `PTRACE_SEIZE` and `PTRACE_INTERRUPT`.
    ///
    /// Setuid mode: the task is checked before it is touched, and once more
    /// once it is stopped (it may have exec'd a setuid program in between);
    /// if the second check fails it is detached with nothing changed.
    fn seize(&mut self, pid: Pid) -> Result<Response, Fail> {
        if self.tracees.contains_key(&pid.as_raw()) {
            return Err(Fail::bare(ErrorKind::AlreadyTraced));
        }
        if self.forbidden.contains(&pid) {
            return Err(Fail::bare(ErrorKind::BadRequest));
        }
        // Any thread of a process may be seized, one request per thread.
        let tgid = tgid_of(pid)?;
        if self.forbidden.contains(&tgid) {
            return Err(Fail::bare(ErrorKind::BadRequest));
        }
        let pidfd = task_pidfd(pid, tgid)?;
        if tgid_of(pid)? != tgid {
            return Err(Fail::bare(ErrorKind::Gone));
        }
        check_task(pid, &pidfd, &self.caller)?;
        let caller = &self.caller;
        pt::seize_checked(
            pid,
            Options::PTRACE_O_TRACESYSGOOD | Options::PTRACE_O_TRACEEXEC,
            &|| check_task(pid, &pidfd, caller),
        )?;
        let saved = check_task(pid, &pidfd, &self.caller)
            .and_then(|()| open_mem(pid))
            .and_then(|mem| Ok((mem, nixptrace::getregs(pid).map_err(on(ErrorKind::Regs))?)))
            .and_then(|(mem, r)| {
                Ok((
                    mem,
                    r,
                    sys::get_sigmask(pid).map_err(on(ErrorKind::Sigmask))?,
                ))
            });
        let (mem, saved_regs, saved_sigmask) = match saved {
            Ok(s) => s,
            Err(f) => {
                let _ = nixptrace::detach(pid, None);
                return Err(f);
            }
        };
        let t = Tracee {
            pid,
            pidfd,
            mem,
            kind: Kind::Target,
            saved_regs,
            saved_sigmask,
            gadget: None,
            last_stop: LastStop::Interrupt,
            pending_signal: None,
            injected: 0,
            writes: 0,
            tgid,
            new_tasks: Vec::new(),
        };
        self.tracees.insert(pid.as_raw(), t);
        self.log.done("seize", pid.as_raw(), format_args!("target"));
        Ok(Response::Ok)
    }

    /// `Request::CreateStub`: clone3(2) with `set_tid` in the spawner, then
    /// `PTRACE_SEIZE` with `PTRACE_O_EXITKILL` here (we are its parent).
    fn create_stub(
        &mut self,
        pid: Pid,
        targets: &[i32],
        fds: Vec<OwnedFd>,
    ) -> Result<Response, Fail> {
        if self.tracees.contains_key(&pid.as_raw()) {
            return Err(Fail::bare(ErrorKind::AlreadyTraced));
        }
        let spawner = self.spawner.as_mut().ok_or(Fail::bare(ErrorKind::Clone))?;
        spawner
            .create(pid, targets, &fds)
            .map_err(on(ErrorKind::Clone))?;
        drop(fds);
        // It is our unreaped child from here on: its PID cannot be reused.
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = sys::waitpid_all(pid);
                return Err(on(ErrorKind::PidfdOpen)(e));
            }
        };
        let gadget = sys::gadget_addr();
        // The stub has dropped to the caller's credentials before its
        // pause(2), so it passes the setuid-mode check like any task of the
        // caller; a stub that did not is killed.
        let r = seize_stub(pid).and_then(|regs| {
            check_task(pid, &pidfd, &self.caller)?;
            let mask = sys::get_sigmask(pid).map_err(on(ErrorKind::Sigmask))?;
            Ok((regs, mask, open_mem(pid)?))
        });
        let (saved_regs, saved_sigmask, mem) = match r {
            Ok(x) => x,
            Err(f) => {
                let _ = sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(&pidfd), libc::SIGKILL);
                let _ = sys::waitpid_all(pid);
                return Err(f);
            }
        };
        let t = Tracee {
            pid,
            pidfd,
            mem,
            kind: Kind::Stub,
            saved_regs,
            saved_sigmask,
            gadget: Some(gadget),
            last_stop: LastStop::Interrupt,
            pending_signal: None,
            injected: 0,
            writes: 0,
            tgid: pid,
            new_tasks: Vec::new(),
        };
        self.tracees.insert(pid.as_raw(), t);
        self.log.done(
            "create-stub",
            pid.as_raw(),
            format_args!("descriptors={}", targets.len()),
        );
        Ok(Response::Stub { gadget })
    }

    /// Take over a task created by an injected call in a stub (a thread or
    /// a child process): it sits in its first stop, traced with the stub
    /// options; it becomes a stub with its creator's gadget (same code, or
    /// the same address space). One that cannot be set up is killed.
    fn adopt(&mut self, pid: Pid, gadget: Option<u64>) {
        let r = tgid_of(pid).and_then(|tgid| {
            let pidfd = task_pidfd(pid, tgid)?;
            check_task(pid, &pidfd, &self.caller)?;
            let saved_regs = nixptrace::getregs(pid).map_err(on(ErrorKind::Regs))?;
            let saved_sigmask = sys::get_sigmask(pid).map_err(on(ErrorKind::Sigmask))?;
            Ok(Tracee {
                pid,
                pidfd,
                mem: open_mem(pid)?,
                kind: Kind::Stub,
                saved_regs,
                saved_sigmask,
                gadget,
                last_stop: LastStop::Interrupt,
                pending_signal: None,
                injected: 0,
                writes: 0,
                tgid,
                new_tasks: Vec::new(),
            })
        });
        match r {
            Ok(t) => {
                self.log
                    .done("adopt", pid.as_raw(), format_args!("tgid={}", t.tgid));
                self.tracees.insert(pid.as_raw(), t);
            }
            Err(f) => {
                // Our tracee from its first instruction: nothing else of it
                // has run; it must not run at all.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                self.log
                    .refused("adopt", pid.as_raw(), format_args!("{}", f.kind));
            }
        }
    }

    /// Before a leader is killed: kill its other traced threads and, for a
    /// stub, wait for them (their deaths are reported before the leader's;
    /// see [`pt::release`] for why a target is not waited for).
    fn kill_threads_of(&mut self, leader: &Tracee) {
        let tids: Vec<i32> = self
            .tracees
            .values()
            .filter(|t| t.tgid == leader.pid && t.pid != leader.pid)
            .map(|t| t.pid.as_raw())
            .collect();
        let _ = pt::send_kill(leader);
        for tid in tids {
            if let Some(t) = self.tracees.remove(&tid) {
                let _ = pt::release(&t, ReleaseMode::Kill);
                self.log_release(&t, "kill");
            }
        }
    }

    /// `Request::WaitExit`: waitpid(2) on a released stub (our child).
    fn wait_exit(&mut self, pid: i32) -> Result<Response, Fail> {
        if !self.released_children.remove(&pid) {
            return Err(not_traced());
        }
        loop {
            match sys::waitpid_all(Pid::from_raw(pid)).map(pt::classify) {
                Ok(pt::Stop::Exited(c)) => return Ok(Response::Exit(ExitStatus::Code(c))),
                Ok(pt::Stop::Killed(s)) => return Ok(Response::Exit(ExitStatus::Signal(s))),
                Ok(_) => continue,
                Err(e) => return Err(on(ErrorKind::Wait)(e)),
            }
        }
    }

    /// `Request::DumpPages`: see process_vm_readv(2).
    fn dump_pages(&mut self, pid: i32, runs: &[PageRun], image: OwnedFd) -> Result<Response, Fail> {
        let t = self.tracees.get(&pid).ok_or(not_traced())?;
        if self.page_buf.is_empty() {
            self.page_buf = vec![0u8; pages::BUF_SIZE];
        }
        let mut image = File::from(image);
        let chan = self.chan.as_fd();
        let abort = || pages::peer_gone(chan);
        let tpid = t.pid;
        let still_ours = || sys::get_sigmask(tpid).is_ok();
        let n = pages::dump(
            t.pid,
            &t.mem,
            runs,
            &mut image,
            &mut self.page_buf,
            &abort,
            &still_ours,
        )?;
        self.log.done(
            "dump-pages",
            pid,
            format_args!("runs={} bytes={n}", runs.len()),
        );
        Ok(Response::PagesWritten(n))
    }
}

/// The requests that act on one traced task and need nothing else.
fn on_tracee(t: &mut Tracee, req: Request) -> Result<Response, Fail> {
    let pid = t.pid;
    match req {
        Request::GetRegs { .. } => {
            let regs = nixptrace::getregs(pid).map_err(on(ErrorKind::Regs))?;
            let mut xstate = vec![0u8; MAX_XSTATE];
            let n = sys::get_xstate(pid, &mut xstate).map_err(on(ErrorKind::Regs))?;
            xstate.truncate(n);
            Ok(Response::Regs {
                regs: pt::regs_to_wire(&regs),
                xstate,
            })
        }
        Request::SetRegs { regs, xstate, .. } => {
            set_regs(pid, &regs)?;
            if let Some(x) = xstate {
                sys::set_xstate(pid, &x).map_err(on(ErrorKind::Regs))?;
            }
            Ok(Response::Ok)
        }
        Request::GetSigmask { .. } => sys::get_sigmask(pid)
            .map(Response::Sigmask)
            .map_err(on(ErrorKind::Sigmask)),
        Request::SetSigmask { mask, .. } => sys::set_sigmask(pid, mask)
            .map(|()| Response::Ok)
            .map_err(on(ErrorKind::Sigmask)),
        Request::PeekSiginfo {
            shared,
            offset,
            count,
            ..
        } => {
            if count == 0 {
                return Ok(Response::Siginfo(Vec::new()));
            }
            let mut buf = vec![0u8; count as usize * SIGINFO_SIZE];
            let n =
                sys::peek_siginfo(pid, shared, offset, &mut buf).map_err(on(ErrorKind::Siginfo))?;
            let records = buf
                .chunks_exact(SIGINFO_SIZE)
                .take(n)
                .map(<[u8]>::to_vec)
                .collect();
            Ok(Response::Siginfo(records))
        }
        Request::GetRseq { .. } => {
            let c = sys::get_rseq(pid).map_err(on(ErrorKind::Rseq))?;
            Ok(Response::Rseq(RseqConfig {
                rseq_abi_pointer: c.rseq_abi_pointer,
                rseq_abi_size: c.rseq_abi_size,
                signature: c.signature,
                flags: c.flags,
            }))
        }
        Request::SetGadget { addr, .. } => {
            let mut insn = [0u8; 2];
            t.mem
                .read_exact_at(&mut insn, addr)
                .map_err(|e| pages::io_fail(ErrorKind::BadGadget, &e))?;
            if insn != [0x0f, 0x05] {
                return Err(Fail::bare(ErrorKind::BadGadget));
            }
            t.gadget = Some(addr);
            Ok(Response::Ok)
        }
        Request::Syscall { nr, args, .. } => {
            pt::inject_syscall(t, nr, args).map(Response::SyscallResult)
        }
        Request::ReadMemory { addr, len, .. } => {
            let mut data = vec![0u8; len as usize];
            t.mem
                .read_exact_at(&mut data, addr)
                .map_err(|e| pages::io_fail(ErrorKind::MemRead, &e))?;
            Ok(Response::Memory(data))
        }
        Request::WriteMemory { addr, data, .. } => {
            t.writes = t.writes.saturating_add(1);
            t.mem
                .write_all_at(&data, addr)
                .map_err(|e| pages::io_fail(ErrorKind::MemWrite, &e))?;
            Ok(Response::Ok)
        }
        _ => Err(Fail::bare(ErrorKind::BadRequest)),
    }
}

fn set_regs(pid: Pid, regs: &UserRegs) -> Result<(), Fail> {
    nixptrace::setregs(pid, pt::regs_from_wire(regs)).map_err(on(ErrorKind::Regs))
}

/// Seize a fresh stub and wait until it sits in pause(2), i.e. has finished
/// placing its descriptors. Returns its registers there.
fn seize_stub(pid: Pid) -> Result<libc::user_regs_struct, Fail> {
    pt::seize(pid, STUB_OPTIONS)?;
    // Up to ~5 s for a stub to reach pause(2); normally it is there at once.
    for _ in 0..5000 {
        let regs = nixptrace::getregs(pid).map_err(on(ErrorKind::Regs))?;
        if regs.orig_rax == libc::SYS_pause as u64 {
            return Ok(regs);
        }
        sys::ptrace_cont(pid, 0).map_err(on(ErrorKind::Interrupt))?;
        std::thread::sleep(std::time::Duration::from_millis(1));
        nixptrace::interrupt(pid).map_err(on(ErrorKind::Interrupt))?;
        match pt::wait(pid, ErrorKind::Interrupt)? {
            pt::Stop::Event => {}
            pt::Stop::Exited(_) | pt::Stop::Killed(_) => return Err(Fail::bare(ErrorKind::Gone)),
            _ => return Err(Fail::bare(ErrorKind::UnexpectedStop)),
        }
    }
    Err(Fail::new(ErrorKind::Clone, Errno::ETIMEDOUT as i32))
}

/// Options for stubs: besides the seize options, a task a stub creates
/// (an injected `clone3` for a thread or a child process) is traced from its
/// first instruction, with these same options.
const STUB_OPTIONS: Options = Options::PTRACE_O_TRACESYSGOOD
    .union(Options::PTRACE_O_EXITKILL)
    .union(Options::PTRACE_O_TRACEEXEC)
    .union(Options::PTRACE_O_TRACECLONE)
    .union(Options::PTRACE_O_TRACEFORK)
    .union(Options::PTRACE_O_TRACEVFORK);

/// The `Tgid:` of /proc/PID/status (proc(5)): the process a thread belongs
/// to (the pid itself for a process).
fn tgid_of(pid: Pid) -> Result<Pid, Fail> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| pages::io_fail(ErrorKind::Gone, &e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|&v: &i32| v > 0)
        .map(Pid::from_raw)
        .ok_or(Fail::bare(ErrorKind::Gone))
}

/// A pidfd for a task: the thread's own (`PIDFD_THREAD`, Linux 6.9+), or on
/// older kernels its process's (signals then go to the process, which for
/// `SIGKILL` and `SIGSTOP` is the same).
fn task_pidfd(pid: Pid, tgid: Pid) -> Result<OwnedFd, Fail> {
    if pid == tgid {
        return sys::pidfd_open(pid).map_err(on(ErrorKind::PidfdOpen));
    }
    match sys::pidfd_open_thread(pid) {
        Ok(fd) => Ok(fd),
        Err(Errno::EINVAL) => sys::pidfd_open(tgid).map_err(on(ErrorKind::PidfdOpen)),
        Err(e) => Err(on(ErrorKind::PidfdOpen)(e)),
    }
}

/// Open /proc/PID/mem read-write (proc(5)).
fn open_mem(pid: Pid) -> Result<File, Fail> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/proc/{pid}/mem"))
        .map_err(|e| pages::io_fail(ErrorKind::MemRead, &e))
}

fn not_traced() -> Fail {
    Fail::bare(ErrorKind::NotTraced)
}

fn error(f: Fail) -> Response {
    match f.deny {
        Some(reason) => Response::Denied { reason },
        None => Response::Error {
            kind: f.kind,
            errno: f.errno,
        },
    }
}

fn release_name(how: ReleaseMode) -> &'static str {
    match how {
        ReleaseMode::Resume => "resume",
        ReleaseMode::Stop => "stop",
        ReleaseMode::Kill => "kill",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_ipc::{seqpacket_pair, MAX_BATCH_STEPS, MAX_MEM_IO};

    fn getpid_step() -> BatchStep {
        BatchStep::Syscall {
            nr: libc::SYS_getpid as u64,
            args: [0; 6],
        }
    }

    /// A server with no spawner and no peer: only `handle` is exercised.
    fn server() -> Server {
        let (a, _b) = seqpacket_pair().unwrap();
        Server {
            chan: Channel::new(a),
            spawner: None,
            tracees: BTreeMap::new(),
            released_children: BTreeSet::new(),
            page_buf: Vec::new(),
            out_fd: None,
            greeted: false,
            forbidden: [getpid(), getppid(), getpid()],
            caller: Caller {
                uid: 0,
                gid: 0,
                groups: Vec::new(),
            },
            log: SecLog::none(),
        }
    }

    fn hello() -> Request {
        Request::Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
        }
    }

    fn err(kind: ErrorKind) -> Response {
        Response::Error { kind, errno: 0 }
    }

    fn dev_null() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn hello_must_come_first_and_match() {
        let (r, next) = server().handle(Request::GetRegs { pid: 1 }, vec![]);
        assert_eq!(r, err(ErrorKind::BadRequest));
        assert!(matches!(next, Next::Exit));
        let bad = Request::Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION + 1,
        };
        let (r, next) = server().handle(bad, vec![]);
        assert_eq!(r, err(ErrorKind::Version));
        assert!(matches!(next, Next::Exit));
        let mut s = server();
        let (r, next) = s.handle(hello(), vec![]);
        assert!(matches!(
            r,
            Response::Hello {
                version: PROTOCOL_VERSION,
                ..
            }
        ));
        assert!(matches!(next, Next::Go));
        assert_eq!(s.handle(hello(), vec![]).0, err(ErrorKind::BadRequest));
    }

    #[test]
    fn bounds_descriptors_and_tracing_are_checked() {
        let mut s = server();
        s.handle(hello(), vec![]);
        let cases = [
            (Request::GetRegs { pid: 0 }, vec![], ErrorKind::BadRequest),
            (
                Request::ReadMemory {
                    pid: 5,
                    addr: 0,
                    len: MAX_MEM_IO + 1,
                },
                vec![],
                ErrorKind::BadRequest,
            ),
            (
                Request::GetRegs { pid: 5 },
                vec![dev_null()],
                ErrorKind::BadRequest,
            ),
            (
                Request::DumpPages {
                    pid: 5,
                    runs: vec![PageRun { addr: 0, len: 4096 }],
                },
                vec![],
                ErrorKind::BadRequest,
            ),
            (
                Request::CreateStub {
                    pid: 5,
                    fds: vec![0, 1],
                },
                vec![dev_null()],
                ErrorKind::BadRequest,
            ),
            (Request::GetRegs { pid: 5 }, vec![], ErrorKind::NotTraced),
            (
                Request::Syscall {
                    pid: 5,
                    nr: 39,
                    args: [0; 6],
                },
                vec![],
                ErrorKind::NotTraced,
            ),
            (
                Request::Release {
                    pid: 5,
                    how: ReleaseMode::Kill,
                },
                vec![],
                ErrorKind::NotTraced,
            ),
            (Request::WaitExit { pid: 5 }, vec![], ErrorKind::NotTraced),
            (
                Request::SetNextPid { parent: 5, pid: 1 },
                vec![],
                ErrorKind::BadRequest,
            ),
            (
                Request::SetNextPid {
                    parent: 5,
                    pid: 100,
                },
                vec![],
                ErrorKind::NotTraced,
            ),
            (
                Request::TakePipe { pid: 5, pipe_fd: 3 },
                vec![dev_null()],
                ErrorKind::BadRequest,
            ),
            (
                Request::TakePipe {
                    pid: 5,
                    pipe_fd: -1,
                },
                vec![],
                ErrorKind::BadRequest,
            ),
            (
                Request::TakePipe { pid: 5, pipe_fd: 3 },
                vec![],
                ErrorKind::NotTraced,
            ),
            (
                Request::Seize {
                    pid: getpid().as_raw(),
                },
                vec![],
                ErrorKind::BadRequest,
            ),
            (
                Request::SyscallBatch {
                    pid: 5,
                    steps: vec![],
                },
                vec![],
                ErrorKind::BadRequest,
            ),
            (
                Request::SyscallBatch {
                    pid: 5,
                    steps: vec![getpid_step(); MAX_BATCH_STEPS + 1],
                },
                vec![],
                ErrorKind::BadRequest,
            ),
            (
                Request::SyscallBatch {
                    pid: 0,
                    steps: vec![getpid_step()],
                },
                vec![],
                ErrorKind::BadRequest,
            ),
            (
                Request::SyscallBatch {
                    pid: 5,
                    steps: vec![
                        BatchStep::Write {
                            addr: 0x1000,
                            data: vec![0; MAX_MEM_IO as usize],
                        },
                        BatchStep::Write {
                            addr: 0x1000,
                            data: vec![0],
                        },
                    ],
                },
                vec![],
                ErrorKind::BadRequest,
            ),
            (
                Request::SyscallBatch {
                    pid: 5,
                    steps: vec![getpid_step()],
                },
                vec![dev_null()],
                ErrorKind::BadRequest,
            ),
            (
                Request::SyscallBatch {
                    pid: 5,
                    steps: vec![getpid_step(); MAX_BATCH_STEPS],
                },
                vec![],
                ErrorKind::NotTraced,
            ),
        ];
        for (req, fds, kind) in cases {
            let name = req.name();
            let (r, next) = s.handle(req, fds);
            assert_eq!(r, err(kind), "{name}");
            assert!(matches!(next, Next::Go), "{name}");
        }
    }
}
