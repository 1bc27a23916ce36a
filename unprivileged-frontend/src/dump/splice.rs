//! The one-copy page path of a dump, as upstream criu does it: the task
//! vmsplice(2)s its own pages into pipes of its own (injected calls), the
//! helper hands us the read ends (`Request::TakePipe`), and a thread of ours
//! per pipe splice(2)s them into the pages files while the next vmsplice is
//! injected into the other pipe. Above [`SPLIT_MIN`] bytes the pages are
//! striped over two files (see [`plan`]) and pipe k feeds only file k: tmpfs
//! takes the inode's lock for each write, so two writers of one file would
//! wait for each other. vmsplice without `SPLICE_F_GIFT` only references the
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

/// Bytes of one stripe of the pages files: the pipe size asked for, so
/// that with two pipes each vmsplice fills one pipe with one stripe.
pub const STRIPE: u64 = WANT_PIPE;

/// A process storing more than this many bytes has its pages striped over
/// two files; less stays in one (`pages-PID.img`).
pub const SPLIT_MIN: u64 = 2 * STRIPE;

/// How many pages files `total` bytes of pages go to: 1, or 2 above
/// [`SPLIT_MIN`].
pub fn files_for(total: u64) -> usize {
    if total > SPLIT_MIN {
        2
    } else {
        1
    }
}

/// One piece of the copy plan: `len` bytes at `addr` of the task, from run
/// `run` of the list planned, go to pages file `file` at byte `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Start address in the task, page aligned.
    pub addr: u64,
    /// Length in bytes, a multiple of the page size.
    pub len: u64,
    /// Index of the pages file.
    pub file: usize,
    /// Byte offset in that file.
    pub off: u64,
    /// Index of the run it comes from.
    pub run: usize,
}

/// Plan where every byte of `runs` goes, before anything is copied: with
/// one file, each run follows the last; with `files` > 1, the stream of all
/// runs' bytes is cut into [`STRIPE`]s that go to file 0, 1, .., 0, 1, ..
/// in turn, each file's stripes following each other from offset 0. A run
/// crossing a stripe boundary is split there. Returns the pieces in address
/// order and each file's size.
pub fn plan(runs: &[PageRun], files: usize) -> (Vec<Piece>, Vec<u64>) {
    let files = files.max(1);
    let mut out = Vec::with_capacity(runs.len());
    let mut sizes = vec![0u64; files];
    let mut pos = 0u64;
    for (i, r) in runs.iter().enumerate() {
        let mut addr = r.addr;
        let end = r.addr + r.len;
        while addr < end {
            let (len, file, off) = if files == 1 {
                (end - addr, 0, pos)
            } else {
                let stripe = pos / STRIPE;
                let within = pos % STRIPE;
                let len = (end - addr).min(STRIPE - within);
                let file = (stripe % files as u64) as usize;
                (len, file, stripe / files as u64 * STRIPE + within)
            };
            out.push(Piece {
                addr,
                len,
                file,
                off,
                run: i,
            });
            sizes[file] = sizes[file].max(off + len);
            addr += len;
            pos += len;
        }
    }
    (out, sizes)
}

/// Split pieces into pieces of at most `cap` bytes, in order.
fn cut(pieces: &[Piece], cap: u64) -> Vec<Piece> {
    let mut out = Vec::with_capacity(pieces.len());
    for p in pieces {
        let mut done = 0;
        while done < p.len {
            let len = (p.len - done).min(cap);
            out.push(Piece {
                addr: p.addr + done,
                len,
                off: p.off + done,
                ..*p
            });
            done += len;
        }
    }
    out
}

/// Groups of consecutive pieces that fill the pipe at most once, fit one
/// vmsplice and follow each other in one file: `(first, count, bytes)`.
fn chunks(pieces: &[Piece], cap: u64) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let mut n = 0;
        let mut bytes = 0;
        while i + n < pieces.len()
            && n < MAX_IOV
            && bytes + pieces[i + n].len <= cap
            && (n == 0
                || (pieces[i + n].file == pieces[i].file
                    && pieces[i + n].off == pieces[i].off + bytes))
        {
            bytes += pieces[i + n].len;
            n += 1;
        }
        out.push((i, n, bytes));
        i += n;
    }
    out
}

/// A job for a splicing thread: chunk index, file, offset, bytes.
type Job = (usize, usize, u64, u64);

/// What a splicing thread reports per job: its pipe, the chunk, the bytes
/// it wrote, and the error that stopped it, if any.
type Spliced = (usize, usize, u64, Option<std::io::Error>);

/// Move exactly `len` bytes from the pipe `from` to `to` at byte `off`.
fn splice_all(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    off: u64,
    len: u64,
) -> (u64, Option<std::io::Error>) {
    let mut moved = 0u64;
    while moved < len {
        let want = (len - moved).min(1 << 30) as usize;
        match crate::sys::splice_nonblock(from, to, off + moved, want) {
            Ok(0) => return (moved, Some(std::io::Error::from_raw_os_error(libc::EPIPE))),
            Ok(n) => moved += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (moved, Some(e)),
        }
    }
    (moved, None)
}

/// Write `pieces` (all in readable mappings, see [`plan`]) to their files
/// and offsets through the pipes: the task vmsplices a chunk into one pipe
/// while the other pipe's thread splices the chunk before into its file.
/// With two files and two pipes, pipe k only ever feeds file k, so each
/// file has one writer (tmpfs takes the inode's lock per write: two writers
/// of one file wait for each other). Returns the bytes written; on failure,
/// the bytes written, the pieces (or parts of them) that may not have
/// reached their place, to be copied another way, and the error.
pub fn write_runs(
    h: &mut Helper,
    r: &Remote,
    pipes: &[TaskPipe],
    pieces: &[Piece],
    files: &[&File],
) -> std::result::Result<u64, (u64, Vec<Piece>, Error)> {
    let reads: Vec<BorrowedFd<'_>> = pipes
        .iter()
        .filter_map(|p| p.ours.as_ref().map(AsFd::as_fd))
        .collect();
    if reads.len() != pipes.len() || pipes.is_empty() {
        return Err((
            0,
            pieces.to_vec(),
            Error::Unsupported("no pipe to splice from".into()),
        ));
    }
    let cap = pipes.iter().map(|p| p.cap).min().unwrap_or(PAGE);
    let outs: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
    let pieces = cut(pieces, cap);
    let mut done_chunk: Vec<bool> = Vec::new();
    let mut all_chunks: Vec<(usize, usize, u64)> = Vec::new();
    let by_file = files.len() > 1 && pipes.len() >= files.len();
    let res = std::thread::scope(|s| {
        let (res_tx, res_rx) = mpsc::channel::<Spliced>();
        let mut job_txs = Vec::with_capacity(reads.len());
        for (k, &from) in reads.iter().enumerate() {
            let (job_tx, job_rx) = mpsc::channel::<Job>();
            job_txs.push(job_tx);
            let res_tx = res_tx.clone();
            let outs = &outs;
            s.spawn(move || {
                for (c, f, off, len) in job_rx {
                    let (n, e) = splice_all(from, outs[f], off, len);
                    let stop = e.is_some();
                    if res_tx.send((k, c, n, e)).is_err() || stop {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        let mut done = 0u64;
        // Per pipe: whether a job is in flight.
        let mut busy = vec![false; pipes.len()];
        let mut failed: Option<Error> = None;
        let wait_one =
            |busy: &mut Vec<bool>, done: &mut u64, done_chunk: &mut Vec<bool>| -> Option<Error> {
                match res_rx.recv() {
                    Ok((k, c, n, e)) => {
                        busy[k] = false;
                        match e {
                            None => {
                                *done += n;
                                done_chunk[c] = true;
                                None
                            }
                            Some(e) => Some(Error::file("pages image (splice)", e)),
                        }
                    }
                    Err(_) => {
                        busy.iter_mut().for_each(|b| *b = false);
                        Some(Error::Unsupported("the splicing threads ended".into()))
                    }
                }
            };
        let mut next = 0usize;
        'all: for (bi, batch) in pieces.chunks(IOV_BATCH).enumerate() {
            let base = bi * IOV_BATCH;
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
                let c = all_chunks.len();
                all_chunks.push((base + first, n, bytes));
                done_chunk.push(false);
                let file = batch[first].file;
                let k = if by_file {
                    file
                } else {
                    let k = next;
                    next = (next + 1) % pipes.len();
                    k
                };
                // Wait until pipe k is drained.
                while busy[k] {
                    if let Some(e) = wait_one(&mut busy, &mut done, &mut done_chunk) {
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
                if got != bytes {
                    // Whatever went into the pipe stays there: the pipe is
                    // not used again, and the whole chunk is copied again.
                    failed = Some(Error::Unsupported(format!(
                        "pid {}: vmsplice moved {got} of {bytes} bytes",
                        r.pid
                    )));
                    break 'all;
                }
                let off = batch[first].off;
                if job_txs[k].send((c, file, off, got)).is_err() {
                    failed = Some(Error::Unsupported("the splicing thread ended".into()));
                    break 'all;
                }
                busy[k] = true;
            }
        }
        job_txs.clear();
        while busy.contains(&true) {
            if let Some(e) = wait_one(&mut busy, &mut done, &mut done_chunk) {
                failed.get_or_insert(e);
            }
        }
        (done, failed)
    });
    match res {
        (done, None) => Ok(done),
        (done, Some(e)) => {
            let mut left: Vec<Piece> = Vec::new();
            let mut covered = 0;
            for (&(first, n, _), &ok) in all_chunks.iter().zip(&done_chunk) {
                if !ok {
                    left.extend_from_slice(&pieces[first..first + n]);
                }
                covered = first + n;
            }
            left.extend_from_slice(&pieces[covered..]);
            Err((done, left, e))
        }
    }
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

    fn piece(addr: u64, pages: u64, file: usize, off: u64, run: usize) -> Piece {
        Piece {
            addr,
            len: pages * PAGE,
            file,
            off: off * PAGE,
            run,
        }
    }

    #[test]
    fn one_file_keeps_runs_whole_and_in_order() {
        let runs = [run(0x1000, 1), run(0x10000, 9), run(0x40000, 2)];
        let (p, sizes) = plan(&runs, 1);
        assert_eq!(
            p,
            vec![
                piece(0x1000, 1, 0, 0, 0),
                piece(0x10000, 9, 0, 1, 1),
                piece(0x40000, 2, 0, 10, 2)
            ]
        );
        assert_eq!(sizes, vec![12 * PAGE]);
        assert_eq!(files_for(SPLIT_MIN), 1);
        assert_eq!(files_for(SPLIT_MIN + PAGE), 2);
    }

    #[test]
    fn stripes_alternate_between_two_files() {
        let sp = STRIPE / PAGE;
        // 1 page, then a run of 3 stripes, then half a stripe: the stream is
        // 3.5 stripes + 1 page.
        let a = 0x1000_0000;
        let runs = [run(0x1000, 1), run(a, 3 * sp), run(0x4000_0000, sp / 2)];
        let (p, sizes) = plan(&runs, 2);
        assert_eq!(
            p,
            vec![
                // stripe 0 -> file 0 at 0
                piece(0x1000, 1, 0, 0, 0),
                piece(a, sp - 1, 0, 1, 1),
                // stripe 1 -> file 1 at 0
                piece(a + (sp - 1) * PAGE, sp, 1, 0, 1),
                // stripe 2 -> file 0 at one stripe
                piece(a + (2 * sp - 1) * PAGE, sp, 0, sp, 1),
                // stripe 3 -> file 1 at one stripe
                piece(a + (3 * sp - 1) * PAGE, 1, 1, sp, 1),
                piece(0x4000_0000, sp / 2, 1, sp + 1, 2),
            ]
        );
        assert_eq!(sizes, vec![2 * STRIPE, STRIPE + STRIPE / 2 + PAGE]);
        // Every byte once: the pieces add up, and per file they follow each
        // other from 0 with no gap or overlap.
        let total: u64 = runs.iter().map(|r| r.len).sum();
        assert_eq!(p.iter().map(|x| x.len).sum::<u64>(), total);
        for (f, &size) in sizes.iter().enumerate() {
            let mut at = 0;
            for x in p.iter().filter(|x| x.file == f) {
                assert_eq!(x.off, at);
                at += x.len;
            }
            assert_eq!(at, size);
        }
    }

    #[test]
    fn chunks_fill_the_pipe_once_within_one_file() {
        let cap = 4 * PAGE;
        let p = cut(
            &[
                piece(0x1000, 1, 0, 0, 0),
                piece(0x10000, 9, 0, 1, 1),
                piece(0x40000, 2, 1, 0, 2),
            ],
            cap,
        );
        assert_eq!(
            p,
            vec![
                piece(0x1000, 1, 0, 0, 0),
                piece(0x10000, 4, 0, 1, 1),
                piece(0x14000, 4, 0, 5, 1),
                piece(0x18000, 1, 0, 9, 1),
                piece(0x40000, 2, 1, 0, 2)
            ]
        );
        let c = chunks(&p, cap);
        assert_eq!(
            c,
            vec![
                (0, 1, PAGE),
                (1, 1, 4 * PAGE),
                (2, 1, 4 * PAGE),
                (3, 1, PAGE),
                (4, 1, 2 * PAGE)
            ]
        );
        let many: Vec<Piece> = (0..3000).map(|i| piece(i * 2 * PAGE, 1, 0, i, 0)).collect();
        let c = chunks(&many, 1 << 30);
        assert_eq!(c[0], (0, MAX_IOV, MAX_IOV as u64 * PAGE));
        assert_eq!(c.iter().map(|c| c.1).sum::<usize>(), 3000);
    }
}
