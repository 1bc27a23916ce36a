//! The one-copy page path of a dump, as upstream criu does it: the task
//! vmsplice(2)s its own pages into pipes of its own (injected calls), the
//! helper hands us the read ends (`Request::TakePipe`), and a thread of ours
//! splice(2)s them into `pages-PID.img` while the next vmsplice is injected
//! into the other pipe. vmsplice without `SPLICE_F_GIFT` only references the
//! pages, and the task is stopped while they sit in a pipe, so the image
//! gets them as they are. The pipes are created here and closed before the
//! dump goes on: the task is left with the descriptors it had.
//!
//! Anything that fails here is not fatal: the caller copies the rest with
//! `DumpPages` (`mm::write_pages`).

use super::mm::PAGE;
use crate::error::{Error, Result};
use crate::helper::Helper;
use crate::remote::{errno_of, Remote};
use shared_ipc::PageRun;
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc;

/// Where `pipe2` writes its two descriptors in the scratch area.
const FDS_OFF: u64 = 0;
/// Pipes used in turn: one is spliced into the image while the task
/// vmsplices into the other.
const PIPES: usize = 2;
/// Where the iovec arrays for vmsplice go in the scratch area.
const IOV_OFF: u64 = 32 * 1024;
/// iovecs written to the task at once: 32 KiB, one `WriteMemory`.
const IOV_BATCH: usize = 2048;
/// Most iovecs one vmsplice(2) takes (`UIO_MAXIOV`).
const MAX_IOV: usize = 1024;
/// Pipe size asked for: the default `/proc/sys/fs/pipe-max-size`, the most
/// a task without `CAP_SYS_RESOURCE` may set.
const WANT_PIPE: u64 = 1 << 20;

/// A pipe in the task: both descriptor numbers, its capacity in bytes and
/// our copy of its read end.
#[derive(Debug)]
pub struct TaskPipe {
    rfd: i32,
    wfd: i32,
    cap: u64,
    ours: Option<OwnedFd>,
}

/// Open up to [`PIPES`] pipes in the task (see [`TaskPipe::open`]); empty
/// when the task cannot have one.
///
/// Errors: the helper's failure.
pub fn open_pipes(h: &mut Helper, r: &Remote) -> Result<Vec<TaskPipe>> {
    let mut v = Vec::new();
    while v.len() < PIPES {
        match TaskPipe::open(h, r) {
            Ok(Some(p)) => v.push(p),
            Ok(None) => break,
            Err(e) => {
                let closed = close_pipes(h, r, v);
                return Err(closed.err().unwrap_or(e));
            }
        }
    }
    Ok(v)
}

/// Close every pipe in the task.
///
/// Errors: the first failure; every pipe is tried.
pub fn close_pipes(h: &mut Helper, r: &Remote, pipes: Vec<TaskPipe>) -> Result<()> {
    let mut first = Ok(());
    for p in pipes {
        let c = p.close(h, r);
        if first.is_ok() {
            first = c;
        }
    }
    first
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
        let mut pipe = TaskPipe {
            rfd,
            wfd,
            cap: 0,
            ours: None,
        };
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
        let cap = match cap {
            Ok(n) if errno_of(n).is_none() && n as u64 >= PAGE => Some(n as u64 / PAGE * PAGE),
            other => {
                crate::debug!("pid {}: pipe size: {other:?}; pages are copied", r.pid);
                None
            }
        };
        let ours = match cap.map(|_| h.take_pipe(r.pid, rfd)) {
            Some(Ok(fd)) => Some(fd),
            Some(Err(e)) => {
                crate::debug!("pid {}: taking the pipe: {e}; pages are copied", r.pid);
                None
            }
            None => None,
        };
        match (cap, ours) {
            (Some(cap), Some(fd)) => {
                pipe.cap = cap;
                pipe.ours = Some(fd);
                crate::debug!(
                    "pid {}: pipe {rfd}/{wfd} of {} bytes in the task",
                    r.pid,
                    pipe.cap
                );
                Ok(Some(pipe))
            }
            _ => {
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

/// What the splicing thread reports per job: the bytes it wrote, and the
/// error that stopped it, if any.
type Spliced = (u64, Option<std::io::Error>);

/// Move exactly `len` bytes from the pipe `from` to `to`.
fn splice_all(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: u64) -> Spliced {
    let mut moved = 0u64;
    while moved < len {
        let want = (len - moved).min(1 << 30) as usize;
        match crate::sys::splice_nonblock(from, to, want) {
            Ok(0) => return (moved, Some(std::io::Error::from_raw_os_error(libc::EPIPE))),
            Ok(n) => moved += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (moved, Some(e)),
        }
    }
    (moved, None)
}

/// Write `runs` (all in readable mappings) to `image` through the pipes, in
/// order: the task vmsplices a chunk into one pipe while a thread splices
/// the previous chunk from the other into the image. Returns the bytes
/// written; on failure, the bytes that did reach the image (a prefix of the
/// runs) and the error.
pub fn write_runs(
    h: &mut Helper,
    r: &Remote,
    pipes: &[TaskPipe],
    runs: &[PageRun],
    image: &File,
) -> std::result::Result<u64, (u64, Error)> {
    let reads: Vec<BorrowedFd<'_>> = pipes
        .iter()
        .filter_map(|p| p.ours.as_ref().map(AsFd::as_fd))
        .collect();
    if reads.len() != pipes.len() || pipes.is_empty() {
        return Err((0, Error::Unsupported("no pipe to splice from".into())));
    }
    let cap = pipes.iter().map(|p| p.cap).min().unwrap_or(PAGE);
    let img = image.as_fd();
    std::thread::scope(|s| {
        let (job_tx, job_rx) = mpsc::channel::<(usize, u64)>();
        let (res_tx, res_rx) = mpsc::channel::<Spliced>();
        let reads = &reads;
        s.spawn(move || {
            for (k, len) in job_rx {
                let res = splice_all(reads[k], img, len);
                let stop = res.1.is_some();
                if res_tx.send(res).is_err() || stop {
                    break;
                }
            }
        });
        let mut done = 0u64;
        // Pipes with a job in flight, oldest first.
        let mut in_flight: VecDeque<usize> = VecDeque::new();
        let mut failed: Option<Error> = None;
        let wait_one = |in_flight: &mut VecDeque<usize>, done: &mut u64| -> Option<Error> {
            in_flight.pop_front()?;
            match res_rx.recv() {
                Ok((n, None)) => {
                    *done += n;
                    None
                }
                Ok((n, Some(e))) => {
                    *done += n;
                    Some(Error::file("pages image (splice)", e))
                }
                Err(_) => Some(Error::Unsupported("the splicing thread ended".into())),
            }
        };
        let mut next = 0usize;
        let pieces = pieces(runs, cap);
        'all: for batch in pieces.chunks(IOV_BATCH) {
            let mut iov = Vec::with_capacity(batch.len() * 16);
            for p in batch {
                iov.extend_from_slice(&p.addr.to_ne_bytes());
                iov.extend_from_slice(&p.len.to_ne_bytes());
            }
            let iov_addr = match r.put(h, IOV_OFF, &iov) {
                Ok(a) => a,
                Err(e) => {
                    failed = Some(e);
                    break 'all;
                }
            };
            for (first, n, bytes) in chunks(batch, cap) {
                let k = next;
                next = (next + 1) % pipes.len();
                // Wait until pipe k is drained (jobs end in order).
                while in_flight.contains(&k) {
                    if let Some(e) = wait_one(&mut in_flight, &mut done) {
                        failed = Some(e);
                        break 'all;
                    }
                }
                let ret = r.raw(
                    h,
                    libc::SYS_vmsplice,
                    [
                        pipes[k].wfd as u64,
                        iov_addr + first as u64 * 16,
                        n as u64,
                        libc::SPLICE_F_NONBLOCK as u64,
                        0,
                        0,
                    ],
                );
                let got = match ret {
                    Ok(v) => match errno_of(v) {
                        None => v as u64,
                        Some(errno) => {
                            failed = Some(Error::Injected {
                                pid: r.pid,
                                call: "vmsplice".into(),
                                errno,
                            });
                            break 'all;
                        }
                    },
                    Err(e) => {
                        failed = Some(e);
                        break 'all;
                    }
                };
                if got > 0 {
                    if job_tx.send((k, got)).is_err() {
                        failed = Some(Error::Unsupported("the splicing thread ended".into()));
                        break 'all;
                    }
                    in_flight.push_back(k);
                }
                if got != bytes {
                    failed = Some(Error::Unsupported(format!(
                        "pid {}: vmsplice moved {got} of {bytes} bytes",
                        r.pid
                    )));
                    break 'all;
                }
            }
        }
        drop(job_tx);
        while !in_flight.is_empty() {
            if let Some(e) = wait_one(&mut in_flight, &mut done) {
                failed.get_or_insert(e);
                break;
            }
        }
        match failed {
            None => Ok(done),
            Some(e) => Err((done, e)),
        }
    })
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
