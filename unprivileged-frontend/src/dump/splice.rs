//! The one-copy page path of a dump, as upstream criu does it: the task
//! vmsplice(2)s its own pages into a pipe of its own (injected calls), and
//! the helper splice(2)s the pipe into `pages-PID.img`
//! (`Request::SpliceToImage`). vmsplice without `SPLICE_F_GIFT` only
//! references the pages, and the task is stopped while they sit in the
//! pipe, so the image gets them as they are. The pipe is created here and
//! closed before the dump goes on: the task is left with the descriptors it
//! had.
//!
//! Anything that fails here is not fatal: the caller copies the rest with
//! `DumpPages` (`mm::write_pages`).

use super::mm::PAGE;
use crate::error::{Error, Result};
use crate::helper::Helper;
use crate::remote::{errno_of, Remote};
use shared_ipc::PageRun;
use std::fs::File;

/// Where `pipe2` writes its two descriptors in the scratch area.
const FDS_OFF: u64 = 0;
/// Where the iovec arrays for vmsplice go in the scratch area.
const IOV_OFF: u64 = 32 * 1024;
/// iovecs written to the task at once: 32 KiB, one `WriteMemory`.
const IOV_BATCH: usize = 2048;
/// Most iovecs one vmsplice(2) takes (`UIO_MAXIOV`).
const MAX_IOV: usize = 1024;
/// Pipe size asked for: the default `/proc/sys/fs/pipe-max-size`, the most
/// a task without `CAP_SYS_RESOURCE` may set.
const WANT_PIPE: u64 = 1 << 20;

/// A pipe in the task: both descriptor numbers and its capacity in bytes.
#[derive(Debug)]
pub struct TaskPipe {
    rfd: i32,
    wfd: i32,
    cap: u64,
}

impl TaskPipe {
    /// Create a pipe in the task (`pipe2(O_CLOEXEC)`) and grow it to
    /// [`WANT_PIPE`] (or keep what the kernel allows). `None` when the task
    /// cannot have one (e.g. `EMFILE`).
    ///
    /// Errors: the helper's failure; the scratch area is too small.
    pub fn open(h: &mut Helper, r: &Remote) -> Result<Option<TaskPipe>> {
        if r.scratch_len < IOV_OFF + (IOV_BATCH * 16) as u64 {
            return Ok(None);
        }
        let fds_addr = r.scratch + FDS_OFF;
        let ret = r.raw(
            h,
            libc::SYS_pipe2,
            [fds_addr, libc::O_CLOEXEC as u64, 0, 0, 0, 0],
        )?;
        if let Some(e) = errno_of(ret) {
            crate::debug!("pid {}: pipe2 in the task: {e}; pages are copied", r.pid);
            return Ok(None);
        }
        let b = r.get(h, FDS_OFF, 8)?;
        let rfd = i32::from_ne_bytes(b[0..4].try_into().expect("4 bytes"));
        let wfd = i32::from_ne_bytes(b[4..8].try_into().expect("4 bytes"));
        let mut pipe = TaskPipe { rfd, wfd, cap: 0 };
        let set = r.raw(
            h,
            libc::SYS_fcntl,
            [wfd as u64, libc::F_SETPIPE_SZ as u64, WANT_PIPE, 0, 0, 0],
        );
        let cap = match set {
            Ok(n) if errno_of(n).is_none() => Ok(n),
            _ => r.raw(
                h,
                libc::SYS_fcntl,
                [wfd as u64, libc::F_GETPIPE_SZ as u64, 0, 0, 0, 0],
            ),
        };
        match cap {
            Ok(n) if errno_of(n).is_none() && n as u64 >= PAGE => {
                pipe.cap = n as u64 / PAGE * PAGE;
                crate::debug!(
                    "pid {}: pipe {rfd}/{wfd} of {} bytes in the task",
                    r.pid,
                    pipe.cap
                );
                Ok(Some(pipe))
            }
            other => {
                crate::debug!("pid {}: pipe size: {other:?}; pages are copied", r.pid);
                pipe.close(h, r)?;
                Ok(None)
            }
        }
    }

    /// Close both ends in the task.
    ///
    /// Errors: the helper's failure, or a close that fails.
    pub fn close(self, h: &mut Helper, r: &Remote) -> Result<()> {
        let a = r.call(
            h,
            "close(pipe)",
            libc::SYS_close,
            [self.rfd as u64, 0, 0, 0, 0, 0],
        );
        let b = r.call(
            h,
            "close(pipe)",
            libc::SYS_close,
            [self.wfd as u64, 0, 0, 0, 0, 0],
        );
        a?;
        b?;
        Ok(())
    }
}

/// Split runs into pieces of at most `cap` bytes, in order.
fn pieces(runs: &[PageRun], cap: u64) -> Vec<PageRun> {
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        let mut addr = r.addr;
        let end = r.addr + r.len;
        while addr < end {
            let len = (end - addr).min(cap);
            out.push(PageRun { addr, len });
            addr += len;
        }
    }
    out
}

/// Groups of consecutive pieces that fill the pipe at most once and fit one
/// vmsplice: `(first, count, bytes)`.
fn chunks(pieces: &[PageRun], cap: u64) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let mut n = 0;
        let mut bytes = 0;
        while i + n < pieces.len() && n < MAX_IOV && bytes + pieces[i + n].len <= cap {
            bytes += pieces[i + n].len;
            n += 1;
        }
        out.push((i, n, bytes));
        i += n;
    }
    out
}

/// Write `runs` (all in readable mappings) to `image` through the pipe, in
/// order. Returns the bytes written; on failure, the bytes that did reach
/// the image (a prefix of the runs) and the error.
pub fn write_runs(
    h: &mut Helper,
    r: &Remote,
    pipe: &TaskPipe,
    runs: &[PageRun],
    image: &File,
) -> std::result::Result<u64, (u64, Error)> {
    let mut done = 0u64;
    let pieces = pieces(runs, pipe.cap);
    for batch in pieces.chunks(IOV_BATCH) {
        let mut iov = Vec::with_capacity(batch.len() * 16);
        for p in batch {
            iov.extend_from_slice(&p.addr.to_ne_bytes());
            iov.extend_from_slice(&p.len.to_ne_bytes());
        }
        let iov_addr = r.put(h, IOV_OFF, &iov).map_err(|e| (done, e))?;
        for (first, n, bytes) in chunks(batch, pipe.cap) {
            let ret = r
                .raw(
                    h,
                    libc::SYS_vmsplice,
                    [
                        pipe.wfd as u64,
                        iov_addr + first as u64 * 16,
                        n as u64,
                        libc::SPLICE_F_NONBLOCK as u64,
                        0,
                        0,
                    ],
                )
                .map_err(|e| (done, e))?;
            if let Some(errno) = errno_of(ret) {
                return Err((
                    done,
                    Error::Injected {
                        pid: r.pid,
                        call: "vmsplice".into(),
                        errno,
                    },
                ));
            }
            let got = ret as u64;
            if got > 0 {
                let w = h
                    .splice_to_image(r.pid, pipe.rfd, got, image)
                    .map_err(|e| (done, e.into()))?;
                done += w;
            }
            if got != bytes {
                return Err((
                    done,
                    Error::Unsupported(format!(
                        "pid {}: vmsplice moved {got} of {bytes} bytes",
                        r.pid
                    )),
                ));
            }
        }
    }
    Ok(done)
}

/// The runs left after the first `skip` bytes of `runs`.
pub fn skip_bytes(runs: &[PageRun], mut skip: u64) -> Vec<PageRun> {
    let mut out = Vec::new();
    for r in runs {
        if skip >= r.len {
            skip -= r.len;
            continue;
        }
        out.push(PageRun {
            addr: r.addr + skip,
            len: r.len - skip,
        });
        skip = 0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(addr: u64, pages: u64) -> PageRun {
        PageRun {
            addr,
            len: pages * PAGE,
        }
    }

    #[test]
    fn pieces_and_chunks_fill_the_pipe_once() {
        let cap = 4 * PAGE;
        let runs = [run(0x1000, 1), run(0x10000, 9), run(0x40000, 2)];
        let p = pieces(&runs, cap);
        assert_eq!(
            p,
            vec![
                run(0x1000, 1),
                run(0x10000, 4),
                run(0x14000, 4),
                run(0x18000, 1),
                run(0x40000, 2)
            ]
        );
        let c = chunks(&p, cap);
        assert_eq!(
            c,
            vec![
                (0, 1, PAGE),
                (1, 1, 4 * PAGE),
                (2, 1, 4 * PAGE),
                (3, 2, 3 * PAGE)
            ]
        );
        let many: Vec<PageRun> = (0..3000).map(|i| run(i * 2 * PAGE, 1)).collect();
        let c = chunks(&many, 1 << 30);
        assert_eq!(c[0], (0, MAX_IOV, MAX_IOV as u64 * PAGE));
        assert_eq!(c.iter().map(|c| c.1).sum::<usize>(), 3000);
    }

    #[test]
    fn skipping_bytes_splits_a_run() {
        let runs = [run(0x1000, 2), run(0x10000, 3)];
        assert_eq!(skip_bytes(&runs, 0), runs.to_vec());
        assert_eq!(skip_bytes(&runs, 3 * PAGE), vec![run(0x11000, 2)]);
        assert_eq!(skip_bytes(&runs, 5 * PAGE), vec![]);
    }
}
