//! Restoring large runs of private anonymous memory with userfaultfd(2):
//! the task creates a userfaultfd (one injected call), criu takes a
//! duplicate of it (pidfd_getfd(2)), registers the freshly mapped VMAs and
//! fills them with `UFFDIO_COPY` straight from its own read-only mapping of
//! the pages image (two threads when there are two CPUs). The kernel allocates each page and copies into it once;
//! a `pread64` into fresh memory has every page zeroed by the page fault
//! first and then overwritten, which costs about half as much again (see
//! docs/PERFORMANCE.md, 2026-11-29 afternoon).
//!
//! Only a speed-up: whatever cannot go this way (userfaultfd refused, the
//! descriptor not obtainable, a run outside a plain anonymous VMA, a page
//! already present, a short image) is handed back to the `pread64` path,
//! which reports damaged images clearly.
//!
//! Kernel interface: userfaultfd(2), ioctl_userfaultfd(2),
//! Documentation/admin-guide/mm/userfaultfd.rst.

use super::cow::Fill;
use crate::error::Result;
use crate::helper::Helper;
use crate::images::types::{Vma, VmaKind};
use crate::remote::{errno_of, Remote};
use crate::uffd::{FileWindow, Userfaultfd, UFFD_USER_MODE_ONLY};
use crate::{debug, info};
use std::fs::File;
use std::path::PathBuf;

/// Runs shorter than this (bytes) stay on the `pread64` path: setting up
/// the userfaultfd costs a few injected calls, worth it only for megabytes.
pub const MIN_RUN: u64 = 1 << 20;
/// Bytes of the pages image mapped into criu at a time: large enough for
/// few `UFFDIO_COPY` calls, small enough to keep criu's resident size low
/// (mapped image pages count in its RSS).
const WINDOW: u64 = 4 << 20;

/// Whether VMA `v` (not inherited from a parent: freshly mapped, so every
/// page of it is missing) can take `UFFDIO_COPY`: private anonymous memory
/// that is not mlock'ed (a locked mapping is populated when mapped).
fn copyable(v: &Vma, thp_always: bool) -> bool {
    matches!(v.kind, VmaKind::Anon)
        && v.flags & libc::MAP_SHARED as u32 == 0
        && !v.locked
        && v.end > v.start
        && !thp_would_serve(v, thp_always)
}

/// Whether the kernel would back `v` with transparent huge pages when it
/// is filled by page faults: `MADV_HUGEPAGE`, or THP `always` without
/// `MADV_NOHUGEPAGE` (see Documentation/admin-guide/mm/transhuge.rst).
/// `UFFDIO_COPY` installs 4 KiB pages only, so such VMAs keep the
/// `pread64` path (after `MADV_POPULATE_WRITE`), which gets huge pages.
fn thp_would_serve(v: &Vma, thp_always: bool) -> bool {
    v.madvise.contains(&libc::MADV_HUGEPAGE)
        || (thp_always && !v.madvise.contains(&libc::MADV_NOHUGEPAGE))
}

/// THP mode `always` (`[always]` in
/// /sys/kernel/mm/transparent_hugepage/enabled).
fn thp_always() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]"))
}

/// Split `fills` into the runs that go through userfaultfd, each with the
/// index of the VMA that holds it whole, and the rest (both in address
/// order). `fills` and `vmas` are in address order; `inherited[i]` says
/// VMA `i` was kept from the parent (its pages may be present).
pub fn select(
    vmas: &[Vma],
    inherited: &[bool],
    fills: &[Fill],
    thp_always: bool,
) -> (Vec<(usize, Fill)>, Vec<Fill>) {
    let (mut fast, mut rest) = (Vec::new(), Vec::new());
    // A run split at a stripe boundary of the pages files (see
    // `dump::splice::plan`) is several fills that follow each other in
    // memory: their total counts against MIN_RUN.
    let mut span = vec![0u64; fills.len()];
    let mut k = 0;
    while k < fills.len() {
        let mut j = k + 1;
        while j < fills.len() && fills[j].vaddr == fills[j - 1].vaddr + fills[j - 1].len {
            j += 1;
        }
        let total = fills[k..j].iter().map(|f| f.len).sum();
        span[k..j].iter_mut().for_each(|x| *x = total);
        k = j;
    }
    let mut i = 0;
    for (f, &span) in fills.iter().zip(&span) {
        while i < vmas.len() && vmas[i].end <= f.vaddr {
            i += 1;
        }
        let holds = vmas
            .get(i)
            .filter(|v| v.start <= f.vaddr && f.vaddr + f.len <= v.end)
            .is_some_and(|v| copyable(v, thp_always) && !inherited.get(i).copied().unwrap_or(true));
        if holds && span >= MIN_RUN {
            fast.push((i, *f));
        } else {
            rest.push(*f);
        }
    }
    (fast, rest)
}

/// Copy what it can of `fills` (see [`select`]) into task `r` from the pages
/// image `pages`; returns the runs, or parts of runs, left for the
/// `pread64` path, in address order.
///
/// Errors: only the helper's failure (a lost task or channel); every
/// refusal of the fast path itself falls back.
pub fn copy_pages(
    h: &mut Helper,
    r: &Remote,
    vmas: &[Vma],
    inherited: &[bool],
    fills: &[Fill],
    pages: &[PathBuf],
) -> Result<Vec<Fill>> {
    let (fast, mut rest) = select(vmas, inherited, fills, thp_always());
    if fast.is_empty() {
        return Ok(rest);
    }
    let Some(uffd) = task_userfaultfd(h, r)? else {
        rest.extend(fast.iter().map(|x| x.1));
        rest.sort_by_key(|f| f.vaddr);
        return Ok(rest);
    };
    let image = match pages
        .iter()
        .map(File::open)
        .collect::<std::io::Result<Vec<_>>>()
    {
        Ok(f) => f,
        Err(e) => {
            debug!("pages files: {e}; reading pages instead");
            rest.extend(fast.iter().map(|x| x.1));
            rest.sort_by_key(|f| f.vaddr);
            return Ok(rest);
        }
    };
    let mut registered: Vec<usize> = Vec::new();
    let mut todo = Vec::with_capacity(fast.len());
    for &(vi, f) in &fast {
        if registered.contains(&vi) || register(&uffd, &vmas[vi]) {
            if !registered.contains(&vi) {
                registered.push(vi);
            }
            todo.push(f);
        } else {
            rest.push(f);
        }
    }
    // Two threads when there are two CPUs: copies into different pages of
    // one mm run in parallel (UFFDIO_COPY takes the mmap lock for reading).
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get()) > 1;
    let (first, second) = if parallel {
        split_in_two(&todo)
    } else {
        (todo, Vec::new())
    };
    let ((c1, left1), (c2, left2)) = std::thread::scope(|s| {
        let other = s.spawn(|| copy_all(&uffd, &image, &second));
        let mine = copy_all(&uffd, &image, &first);
        (mine, other.join().unwrap_or_else(|_| (0, second.clone())))
    });
    let copied = c1 + c2;
    rest.extend(left1);
    rest.extend(left2);
    for &vi in &registered {
        let v = &vmas[vi];
        if let Err(e) = uffd.unregister(v.start, v.end - v.start) {
            debug!("UFFDIO_UNREGISTER {:#x}-{:#x}: {e}", v.start, v.end);
        }
    }
    drop(uffd);
    rest.sort_by_key(|f| f.vaddr);
    info!(
        "pid {}: {copied} bytes of pages copied with userfaultfd, {} runs left to read",
        r.pid,
        rest.len()
    );
    Ok(rest)
}

/// A userfaultfd of task `r`'s memory, held by criu: created in the task,
/// taken with pidfd_getfd(2), closed in the task again. `None` when the
/// kernel refuses any step (the fast path is then skipped).
///
/// Errors: the helper's failure.
fn task_userfaultfd(h: &mut Helper, r: &Remote) -> Result<Option<Userfaultfd>> {
    let ret = r.raw(
        h,
        libc::SYS_userfaultfd,
        [libc::O_CLOEXEC as u64 | UFFD_USER_MODE_ONLY, 0, 0, 0, 0, 0],
    )?;
    if let Some(e) = errno_of(ret) {
        debug!("pid {}: userfaultfd: {e}; reading pages instead", r.pid);
        return Ok(None);
    }
    let fd = ret as i32;
    let ours = crate::sys::pidfd_open(r.pid)
        .and_then(|p| crate::sys::pidfd_getfd(&p, fd))
        .and_then(Userfaultfd::new);
    r.call(
        h,
        &format!("close(userfaultfd {fd})"),
        libc::SYS_close,
        [fd as u64, 0, 0, 0, 0, 0],
    )?;
    match ours {
        Ok(u) => Ok(Some(u)),
        Err(e) => {
            debug!(
                "pid {}: taking its userfaultfd: {e}; reading pages instead",
                r.pid
            );
            Ok(None)
        }
    }
}

/// Register all of VMA `v`; false (logged) if the kernel refuses.
fn register(uffd: &Userfaultfd, v: &Vma) -> bool {
    match uffd.register(v.start, v.end - v.start) {
        Ok(()) => true,
        Err(e) => {
            debug!("UFFDIO_REGISTER {:#x}-{:#x}: {e}", v.start, v.end);
            false
        }
    }
}

/// Copy every run of `fills`; returns the bytes copied and what is left
/// of the runs (see [`copy_run`]).
fn copy_all(uffd: &Userfaultfd, image: &[File], fills: &[Fill]) -> (u64, Vec<Fill>) {
    let mut copied = 0;
    let mut left = Vec::new();
    for f in fills {
        let done = copy_run(uffd, &image[f.file], f);
        copied += done;
        if done < f.len {
            left.push(Fill {
                vaddr: f.vaddr + done,
                len: f.len - done,
                off: f.off + done,
                ..*f
            });
        }
    }
    (copied, left)
}

/// Split `fills` into two lists of about the same number of bytes, cutting
/// a run at a [`WINDOW`] boundary of its own if that evens them out.
pub fn split_in_two(fills: &[Fill]) -> (Vec<Fill>, Vec<Fill>) {
    let total: u64 = fills.iter().map(|f| f.len).sum();
    let half = total / 2;
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut acc = 0u64;
    for f in fills {
        if acc >= half {
            second.push(*f);
        } else if acc + f.len <= half {
            first.push(*f);
        } else {
            let cut = (half - acc).div_ceil(WINDOW) * WINDOW;
            if cut >= f.len {
                first.push(*f);
            } else {
                first.push(Fill { len: cut, ..*f });
                second.push(Fill {
                    vaddr: f.vaddr + cut,
                    len: f.len - cut,
                    off: f.off + cut,
                    ..*f
                });
            }
        }
        acc += f.len;
    }
    (first, second)
}

/// Copy run `f` from the image into the task, a [`WINDOW`] of the image
/// mapped at a time; returns the bytes copied (all of `f.len` unless the
/// kernel stopped early: a page already present, a short image, no memory).
fn copy_run(uffd: &Userfaultfd, image: &File, f: &Fill) -> u64 {
    let mut done = 0u64;
    while done < f.len {
        let len = (f.len - done).min(WINDOW);
        let src = match FileWindow::map(image, f.off + done, len as usize) {
            Ok(w) => w,
            Err(e) => {
                debug!("mmap of the pages image at {}: {e}", f.off + done);
                break;
            }
        };
        let (n, err) = uffd.copy(f.vaddr + done, &src);
        done += n;
        if let Some(e) = err {
            debug!(
                "UFFDIO_COPY to {:#x}: stopped after {n} of {len} bytes ({e}); the rest is read",
                f.vaddr + done - n
            );
            break;
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, end: u64, kind: VmaKind, flags: u32) -> Vma {
        Vma {
            start,
            end,
            prot: 3,
            flags,
            pgoff: 0,
            kind,
            madvise: vec![],
            locked: false,
            name: String::new(),
        }
    }

    #[test]
    fn only_large_runs_inside_fresh_private_anonymous_vmas() {
        let private = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
        let shared = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32;
        let m = MIN_RUN;
        let vmas = [
            vma(0x1000_0000, 0x1000_0000 + 4 * m, VmaKind::Anon, private),
            vma(0x2000_0000, 0x2000_0000 + 4 * m, VmaKind::Anon, private),
            vma(
                0x3000_0000,
                0x3000_0000 + 4 * m,
                VmaKind::SharedAnon { shmid: 1 },
                shared,
            ),
            vma(0x4000_0000, 0x4000_0000 + 4 * m, VmaKind::Anon, private),
        ];
        let inherited = [false, true, false, false];
        let fill = |vaddr, len, off| Fill {
            vaddr,
            len,
            file: 0,
            off,
        };
        let fills = [
            fill(0x1000_0000, m, 0),                 // fast
            fill(0x1000_0000 + 2 * m, m / 2, m),     // too short
            fill(0x2000_0000, m, 2 * m),             // inherited VMA
            fill(0x3000_0000, m, 3 * m),             // shared
            fill(0x4000_0000 + 3 * m, 2 * m, 4 * m), // crosses the VMA's end
            fill(0x4000_0000, 2 * m, 6 * m),         // fast (out of order is kept)
        ];
        let (fast, rest) = select(&vmas, &inherited, &fills[..5], false);
        assert_eq!(fast, vec![(0, fills[0])]);
        assert_eq!(rest, fills[1..5].to_vec());
        let (fast, rest) = select(&vmas, &inherited, &[fills[5]], false);
        assert_eq!(fast, vec![(3, fills[5])]);
        assert!(rest.is_empty());
        let mut locked = vmas.to_vec();
        locked[0].locked = true;
        assert!(select(&locked, &inherited, &fills[..1], false).0.is_empty());
        // Transparent huge pages: MADV_HUGEPAGE, or THP `always` unless
        // MADV_NOHUGEPAGE, keep the pread64 path.
        let mut huge = vmas.to_vec();
        huge[0].madvise = vec![libc::MADV_HUGEPAGE];
        assert!(select(&huge, &inherited, &fills[..1], false).0.is_empty());
        assert!(select(&vmas, &inherited, &fills[..1], true).0.is_empty());
        huge[0].madvise = vec![libc::MADV_NOHUGEPAGE];
        assert_eq!(select(&huge, &inherited, &fills[..1], true).0.len(), 1);
        // A run split over the two pages files: the halves follow each
        // other in memory and count together.
        let halves = [
            fill(0x1000_0000, m / 2, 0),
            Fill {
                file: 1,
                ..fill(0x1000_0000 + m / 2, m / 2, 0)
            },
        ];
        let (fast, rest) = select(&vmas, &inherited, &halves, false);
        assert_eq!(fast, vec![(0, halves[0]), (0, halves[1])]);
        assert!(rest.is_empty());
    }

    #[test]
    fn split_evens_out_bytes_at_window_boundaries() {
        let fill = |vaddr, len, off| Fill {
            vaddr,
            len,
            file: 0,
            off,
        };
        let w = WINDOW;
        // One big run: cut in the middle, at a window boundary.
        let (a, b) = split_in_two(&[fill(0x1000_0000, 4 * w, 0)]);
        assert_eq!(a, vec![fill(0x1000_0000, 2 * w, 0)]);
        assert_eq!(b, vec![fill(0x1000_0000 + 2 * w, 2 * w, 2 * w)]);
        // Two equal runs: one each, uncut.
        let two = [fill(0x1000_0000, w, 0), fill(0x2000_0000, w, w)];
        let (a, b) = split_in_two(&two);
        assert_eq!((a, b), (vec![two[0]], vec![two[1]]));
        // A run smaller than a window is never cut; nothing is lost.
        let odd = [fill(0x1000_0000, w / 2, 0)];
        let (a, b) = split_in_two(&odd);
        assert_eq!((a, b), (odd.to_vec(), vec![]));
        let many: Vec<Fill> = (0..5)
            .map(|i| fill(i * 0x1000_0000, 3 * w, i * 3 * w))
            .collect();
        let (a, b) = split_in_two(&many);
        let sum = |v: &[Fill]| v.iter().map(|f| f.len).sum::<u64>();
        assert_eq!(sum(&a) + sum(&b), 15 * w);
        assert!(sum(&a).abs_diff(sum(&b)) <= 2 * w);
    }
}
