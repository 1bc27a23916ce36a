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
