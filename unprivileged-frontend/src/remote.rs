//! Running system calls inside a traced task through the helper, with a
//! scratch area in the task for their in/out arguments.
//!
//! The helper executes each call at a "gadget", an existing `syscall`
//! instruction in the task (bytes `0f 05`), and stops the task at the
//! syscall exit (see ptrace(2), `PTRACE_SYSCALL`); nothing else of ours runs
//! in the task.

use crate::error::{Error, Result};
use crate::helper::Helper;
use crate::proc::SmapsVma;
use shared_ipc::{BatchStep, UserRegs, MAX_BATCH_STEPS, MAX_MEM_IO};

/// A traced task plus a scratch area mapped in it.
#[derive(Debug, Clone, Copy)]
pub struct Remote {
    /// The task.
    pub pid: i32,
    /// Address of the scratch area (0 until one is mapped).
    pub scratch: u64,
    /// Its length in bytes.
    pub scratch_len: u64,
}

/// Whether a raw syscall return value is an error (`-4095..=-1`), and which.
pub fn errno_of(ret: i64) -> Option<nix::errno::Errno> {
    if (-4095..0).contains(&ret) {
        Some(nix::errno::Errno::from_raw(-ret as i32))
    } else {
        None
    }
}

impl Remote {
    /// A task with no scratch area yet.
    pub fn new(pid: i32) -> Self {
        Remote {
            pid,
            scratch: 0,
            scratch_len: 0,
        }
    }

    /// Run a syscall and return its raw result.
    ///
    /// Errors: the helper could not run it.
    pub fn raw(&self, h: &mut Helper, nr: i64, args: [u64; 6]) -> Result<i64> {
        Ok(h.syscall(self.pid, nr, args)?)
    }

    /// Run a syscall that must succeed; `what` names it in the error
    /// (e.g. `"mmap(0x7f0000000000)"`).
    ///
    /// Errors: [`Error::Injected`] with the errno it returned.
    pub fn call(&self, h: &mut Helper, what: &str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let r = self.raw(h, nr, args)?;
        crate::debug!("pid {}: {what} = {r:#x}", self.pid);
        match errno_of(r) {
            Some(errno) => Err(Error::Injected {
                pid: self.pid,
                call: what.to_string(),
                errno,
            }),
            None => Ok(r as u64),
        }
    }

    fn check(&self, off: u64, len: usize) -> Result<u64> {
        if self.scratch == 0 || off + len as u64 > self.scratch_len {
            return Err(Error::Unsupported(format!(
                "pid {}: {len} bytes at scratch offset {off} do not fit the scratch area",
                self.pid
            )));
        }
        Ok(self.scratch + off)
    }

    /// Write `data` at `off` in the scratch area; returns its address.
    ///
    /// Errors: out of the scratch area, or the helper's failure.
    pub fn put(&self, h: &mut Helper, off: u64, data: &[u8]) -> Result<u64> {
        let addr = self.check(off, data.len())?;
        h.write_memory(self.pid, addr, data)?;
        Ok(addr)
    }

    /// Write a NUL-terminated string at `off`; returns its address.
    ///
    /// Errors: as [`Remote::put`].
    pub fn put_cstr(&self, h: &mut Helper, off: u64, s: &str) -> Result<u64> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(h, off, &b)
    }

    /// Read `len` bytes at `off` in the scratch area.
    ///
    /// Errors: as [`Remote::put`].
    pub fn get(&self, h: &mut Helper, off: u64, len: usize) -> Result<Vec<u8>> {
        let addr = self.check(off, len)?;
        Ok(h.read_memory(self.pid, addr, len)?)
    }
}

/// Scratch writes and injected calls for one task, sent to the helper
/// together (`Request::SyscallBatch`): one round trip for up to
/// [`MAX_BATCH_STEPS`] steps instead of one per step. Steps run in order, so
/// a write may reuse a scratch offset an earlier call of the batch read.
/// Every call must succeed: the batch stops at the first that fails.
#[derive(Debug)]
pub struct Batch {
    remote: Remote,
    steps: Vec<BatchStep>,
    /// Per step: the call's name for the log and errors; `None` for a write.
    names: Vec<Option<String>>,
}

impl Batch {
    /// An empty batch for the task of `r` and its scratch area.
    pub fn new(r: &Remote) -> Batch {
        Batch {
            remote: *r,
            steps: Vec::new(),
            names: Vec::new(),
        }
    }

    /// The task the batch is for.
    pub fn pid(&self) -> i32 {
        self.remote.pid
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Write `data` at `off` in the scratch area when the batch runs;
    /// returns its address.
    ///
    /// Errors: out of the scratch area.
    pub fn put(&mut self, off: u64, data: &[u8]) -> Result<u64> {
        let addr = self.remote.check(off, data.len())?;
        for (i, chunk) in data.chunks(MAX_MEM_IO as usize).enumerate() {
            self.steps.push(BatchStep::Write {
                addr: addr + (i * MAX_MEM_IO as usize) as u64,
                data: chunk.to_vec(),
            });
            self.names.push(None);
        }
        Ok(addr)
    }

    /// Run syscall `nr` with `args` when the batch runs; `what` names it in
    /// the log and in the error (as [`Remote::call`]).
    pub fn call(&mut self, what: impl Into<String>, nr: i64, args: [u64; 6]) {
        self.steps.push(BatchStep::Syscall {
            nr: nr as u64,
            args,
        });
        self.names.push(Some(what.into()));
    }

    /// Set the task's registers and, if given, its XSAVE area when the
    /// batch runs (as [`Helper::set_regs`]).
    pub fn set_regs(&mut self, regs: UserRegs, xstate: Option<Vec<u8>>) {
        self.steps.push(BatchStep::SetRegs { regs, xstate });
        self.names.push(None);
    }

    /// Set the task's blocked-signal mask when the batch runs (as
    /// [`Helper::set_sigmask`]).
    pub fn set_sigmask(&mut self, mask: u64) {
        self.steps.push(BatchStep::SetSigmask { mask });
        self.names.push(None);
    }

    /// Send the steps, as few requests as the bounds allow, and empty the
    /// batch; returns the result of every call, in order.
    ///
    /// Errors: [`Error::Injected`] for the first call that returned an
    /// error (the steps after it are not run), or the helper's failure.
    pub fn run(&mut self, h: &mut Helper) -> Result<Vec<u64>> {
        let pid = self.remote.pid;
        let mut out = Vec::with_capacity(self.steps.len());
        let mut names = std::mem::take(&mut self.names).into_iter();
        for chunk in batch_chunks(std::mem::take(&mut self.steps)) {
            let n = chunk.len();
            let results = h.syscall_batch(pid, chunk)?;
            let done = results.len();
            for (v, name) in results.into_iter().zip(names.by_ref()) {
                let Some(what) = name else { continue };
                crate::debug!("pid {pid}: {what} = {v:#x}");
                match errno_of(v) {
                    Some(errno) => {
                        return Err(Error::Injected {
                            pid,
                            call: what,
                            errno,
                        })
                    }
                    None => out.push(v as u64),
                }
            }
            if done < n {
                return Err(Error::Unsupported(format!(
                    "pid {pid}: criu-helper stopped a batch after {done} of {n} steps without an error"
                )));
            }
        }
        Ok(out)
    }
}

/// Split steps into requests of at most [`MAX_BATCH_STEPS`] steps whose
/// writes and register sets count at most [`MAX_MEM_IO`] bytes together
/// ([`BatchStep::bytes`]), keeping their order. Each step alone is within
/// that ([`Batch::put`] splits writes; an XSAVE area is at most 16 KiB).
fn batch_chunks(steps: Vec<BatchStep>) -> Vec<Vec<BatchStep>> {
    let mut out: Vec<Vec<BatchStep>> = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0usize;
    for st in steps {
        let len = st.bytes();
        if cur.len() == MAX_BATCH_STEPS || bytes + len > MAX_MEM_IO as usize {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += len;
        cur.push(st);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Find a `syscall` instruction (bytes `0f 05`) in an executable mapping of
/// the task, trying `[vdso]` first (always present, small), then the other
/// executable mappings. Any position holding those two bytes works, since
/// execution starts there and stops at the syscall exit.
///
/// Errors: [`Error::Unsupported`] when no mapping holds one.
pub fn find_gadget(h: &mut Helper, pid: i32, vmas: &[SmapsVma]) -> Result<u64> {
    let mut cands: Vec<&SmapsVma> = vmas
        .iter()
        .filter(|v| v.exec() && v.name != "[vsyscall]")
        .collect();
    cands.sort_by_key(|v| if v.name == "[vdso]" { 0 } else { 1 });
    for v in cands {
        let mut addr = v.start;
        while addr < v.end {
            let len = ((v.end - addr) as usize).min(256 * 1024);
            let Ok(bytes) = h.read_memory(pid, addr, len) else {
                break;
            };
            if let Some(i) = bytes.windows(2).position(|w| w == [0x0f, 0x05]) {
                return Ok(addr + i as u64);
            }
            // Keep one byte of overlap so a pair split across chunks is found.
            addr += len as u64 - 1;
            if len < 2 {
                break;
            }
        }
    }
    Err(Error::Unsupported(format!(
        "pid {pid}: no syscall instruction found in any executable mapping"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(nr: u64) -> BatchStep {
        BatchStep::Syscall { nr, args: [0; 6] }
    }

    fn write(len: usize) -> BatchStep {
        BatchStep::Write {
            addr: 0x1000,
            data: vec![7; len],
        }
    }

    fn bounded(chunks: &[Vec<BatchStep>]) {
        for c in chunks {
            let req = shared_ipc::Request::SyscallBatch {
                pid: 1,
                steps: c.clone(),
            };
            assert_eq!(req.check_bounds(), Ok(()));
        }
    }

    #[test]
    fn batches_split_by_steps_and_bytes_in_order() {
        let steps: Vec<BatchStep> = (0..600).map(call).collect();
        let chunks = batch_chunks(steps.clone());
        let lens: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![256, 256, 88]);
        bounded(&chunks);
        assert_eq!(chunks.concat(), steps);

        let half = MAX_MEM_IO as usize / 2;
        let steps = vec![
            write(half),
            call(1),
            write(half),
            call(2),
            write(1),
            call(3),
        ];
        let chunks = batch_chunks(steps.clone());
        let lens: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![4, 2]);
        bounded(&chunks);
        assert_eq!(chunks.concat(), steps);
        assert!(batch_chunks(Vec::new()).is_empty());

        let regs = BatchStep::SetRegs {
            regs: UserRegs::default(),
            xstate: Some(vec![0; 16 * 1024]),
        };
        let steps = vec![regs.clone(), call(1), regs.clone(), regs, call(2)];
        let chunks = batch_chunks(steps.clone());
        let lens: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![2, 1, 2]);
        bounded(&chunks);
        assert_eq!(chunks.concat(), steps);
    }

    #[test]
    fn batch_writes_stay_in_the_scratch_area_and_are_split() {
        let r = Remote {
            pid: 5,
            scratch: 0x10000,
            scratch_len: 0x20000,
        };
        let mut b = Batch::new(&r);
        assert!(b.is_empty());
        let big = vec![1u8; MAX_MEM_IO as usize + 10];
        assert_eq!(b.put(0x100, &big).unwrap(), 0x10100);
        b.call("getpid", libc::SYS_getpid, [0; 6]);
        assert_eq!(b.steps.len(), 3);
        assert_eq!(
            b.steps[1],
            BatchStep::Write {
                addr: 0x10100 + u64::from(MAX_MEM_IO),
                data: vec![1; 10],
            }
        );
        assert_eq!(b.names[2].as_deref(), Some("getpid"));
        assert!(b.put(0x20000 - 4, &[0; 8]).is_err());
        assert!(Batch::new(&Remote::new(5)).put(0, &[0]).is_err());
        bounded(&batch_chunks(b.steps));
    }
}
