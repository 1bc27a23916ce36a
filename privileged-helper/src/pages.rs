//! Copying page runs of a traced task to an image descriptor in large
//! batches: process_vm_readv(2) with many remote iovecs into one reused
//! buffer, then one write to the image. A run the call cannot read (e.g.
//! `PROT_NONE`) is read with pread(2) on `/proc/PID/mem` instead.
//!
//! The faster path copies nothing here: the task vmsplice(2)s its own
//! pages into a pipe of its own (injected calls), [`take_pipe`] hands the
//! frontend the pipe's read end, and the frontend splice(2)s it into the
//! image, so the pages are copied once.

use crate::ptrace::{on, Fail};
use crate::sys;
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, MsgFlags};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;
use shared_ipc::{ErrorKind, PageRun};
use std::fs::File;
use std::io::{IoSliceMut, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// Size of the one copy buffer, allocated on first use and kept. 1 MiB fits
/// the CPU caches, so the second copy (buffer to page cache) reads from
/// cache: measured 1.50 s per GiB with 8 MiB, 0.91 s with 1 MiB
/// (docs/PERFORMANCE.md).
pub const BUF_SIZE: usize = 1 << 20;

/// Most remote iovecs per process_vm_readv(2) call (`IOV_MAX`).
const IOV_MAX: usize = 1024;

/// A piece of a run, at most [`BUF_SIZE`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    addr: u64,
    len: usize,
}

/// Split runs into pieces that each fit the buffer, in order.
fn pieces(runs: &[PageRun]) -> Vec<Piece> {
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        let mut addr = r.addr;
        let mut left = r.len;
        while left > 0 {
            let len = left.min(BUF_SIZE as u64);
            out.push(Piece {
                addr,
                len: len as usize,
            });
            addr += len;
            left -= len;
        }
    }
    out
}

/// Whether the peer of the `SOCK_SEQPACKET` socket `chan` has gone away
/// (end of stream or an error), without consuming anything: a non-blocking
/// `MSG_PEEK` recvmsg(2).
pub fn peer_gone(chan: BorrowedFd<'_>) -> bool {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    match recvmsg::<()>(
        chan.as_raw_fd(),
        &mut iov,
        None,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(m) => m.bytes == 0,
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => false,
        Err(_) => true,
    }
}

/// Copy `runs` of task `pid` to `image` at its current offset; returns the
/// number of bytes written, always the sum of the run lengths. `abort` is
/// asked before each buffer-full: when it says yes (the frontend went away)
/// the copy stops with `ImageWrite`/`ECONNABORTED`, so a large dump does not
/// keep the task stopped for nothing.
///
/// process_vm_readv(2) finds the task by PID on every call, and the helper's
/// `CAP_SYS_PTRACE` passes the kernel's access check for any task. If an
/// untraced thread of the target execs, the kernel gives the target's PID to
/// that thread — possibly now running a setuid program — without any PID
/// reuse the pidfd could notice. So after every read, and before its bytes
/// go anywhere, `still_ours` must prove the PID is still our stopped tracee
/// (a ptrace request succeeds only then); otherwise the bytes are dropped
/// and the copy ends with `Gone`. The `/proc/PID/mem` fallback is bound to
/// the address space opened at seize time and needs no such proof.
pub fn dump(
    pid: Pid,
    mem: &File,
    runs: &[PageRun],
    image: &mut File,
    buf: &mut [u8],
    abort: &dyn Fn() -> bool,
    still_ours: &dyn Fn() -> bool,
) -> Result<u64, Fail> {
    let pieces = pieces(runs);
    let mut total: u64 = 0;
    let mut i = 0;
    while i < pieces.len() {
        if abort() {
            return Err(Fail::new(ErrorKind::ImageWrite, libc::ECONNABORTED));
        }
        // Gather as many pieces as fit the buffer and the iovec limit.
        let mut fill = 0;
        let mut remote = Vec::new();
        for p in &pieces[i..] {
            if remote.len() == IOV_MAX || fill + p.len > buf.len() {
                break;
            }
            remote.push(RemoteIoVec {
                base: p.addr as usize,
                len: p.len,
            });
            fill += p.len;
        }
        let got = match process_vm_readv(pid, &mut [IoSliceMut::new(&mut buf[..fill])], &remote) {
            Ok(n) => n.min(fill),
            Err(Errno::ESRCH) => return Err(Fail::bare(ErrorKind::Gone)),
            Err(_) => 0,
        };
        if !still_ours() {
            buf[..got].fill(0);
            return Err(Fail::bare(ErrorKind::Gone));
        }
        write_image(image, &buf[..got])?;
        total += got as u64;
        if got == fill {
            i += remote.len();
            continue;
        }
        // Find the piece the copy stopped in and read its rest with pread.
        let mut off = got;
        let mut j = i;
        while off >= pieces[j].len {
            off -= pieces[j].len;
            j += 1;
        }
        let p = pieces[j];
        let rest = &mut buf[..p.len - off];
        mem.read_exact_at(rest, p.addr + off as u64)
            .map_err(|e| io_fail(ErrorKind::MemRead, &e))?;
        write_image(image, rest)?;
        total += rest.len() as u64;
        i = j + 1;
    }
    let want: u64 = runs.iter().map(|r| r.len).sum();
    if total != want {
        return Err(Fail::new(ErrorKind::MemRead, Errno::EIO as i32));
    }
    Ok(total)
}

/// `Request::TakePipe`: a copy of descriptor `pipe_fd` of the task
/// `pidfd` refers to (pidfd_getfd(2)), which must be a pipe or FIFO.
pub fn take_pipe(pidfd: BorrowedFd<'_>, pipe_fd: i32) -> Result<OwnedFd, Fail> {
    use nix::sys::stat::{fstat, SFlag};
    let pipe = sys::pidfd_getfd(pidfd, pipe_fd).map_err(on(ErrorKind::Pipe))?;
    let st = fstat(pipe.as_raw_fd()).map_err(on(ErrorKind::Pipe))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFIFO {
        return Err(Fail::new(ErrorKind::Pipe, libc::EINVAL));
    }
    Ok(pipe)
}

fn write_image(image: &mut File, data: &[u8]) -> Result<(), Fail> {
    image
        .write_all(data)
        .map_err(|e| io_fail(ErrorKind::ImageWrite, &e))
}

/// An I/O error as a failure of step `kind`; a short transfer is `EIO`.
pub fn io_fail(kind: ErrorKind, e: &std::io::Error) -> Fail {
    match e.raw_os_error() {
        Some(errno) => on(kind)(Errno::from_raw(errno)),
        None => Fail::new(kind, Errno::EIO as i32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_split_to_fit_the_buffer() {
        let runs = [
            PageRun {
                addr: 0x1000,
                len: 4096,
            },
            PageRun {
                addr: 0x10_0000,
                len: BUF_SIZE as u64 * 2 + 4096,
            },
        ];
        let p = pieces(&runs);
        assert_eq!(p.len(), 4);
        assert_eq!(p[1].addr, 0x10_0000);
        assert_eq!(p[2].addr, 0x10_0000 + BUF_SIZE as u64);
        assert_eq!(p[3].len, 4096);
        assert_eq!(
            p.iter().map(|p| p.len as u64).sum::<u64>(),
            4096 + runs[1].len
        );
    }
}
