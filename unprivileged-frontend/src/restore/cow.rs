//! Copy-on-write sharing between a restored parent and its children.
//!
//! A child process is forked from its parent's stub after the parent's
//! memory is restored, so it starts with the parent's private mappings,
//! their pages shared copy-on-write (see fork(2)). A mapping of the child
//! that is the same as one of its parent's (same range, protection, flags,
//! backing, offset and advice) is kept; in it, only the pages whose stored
//! bytes differ from the parent's at the same address are written, and the
//! pages the parent stored but the child did not (the child's copy is the
//! zero page, or the file's page for a private file mapping) are dropped
//! with `MADV_DONTNEED` (see madvise(2)). Every other mapping is unmapped
//! and mapped again, and all its stored pages are written. The comparison
//! reads both pages images in criu, in large chunks; nothing is asked of
//! the task page by page.

use super::layout::{self, Range};
use super::validate::{fillable, Images, PAGE};
use crate::error::{Error, Result};
use crate::images::types::{PagemapEntry, Vma, VmaKind};
use crate::proc::SmapsVma;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;

/// Bytes of each pages image read at a time when comparing (small enough
/// that what was just read is still in the CPU cache when compared).
const CHUNK: u64 = 128 << 10;

/// A parent's pages image up to this size is read once and kept in memory
/// for all its children (a tree is usually one parent and many children);
/// a larger one is read chunk by chunk for each child.
const PARENT_CACHE_MAX: u64 = 8 << 20;

/// A run of pages to write: `len` bytes at `vaddr`, from byte `off` of the
/// process's pages file `file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    /// Destination address, page aligned.
    pub vaddr: u64,
    /// Length in bytes, a multiple of the page size.
    pub len: u64,
    /// Which pages file: an index into [`Images::pages`].
    pub file: usize,
    /// Offset in that pages file.
    pub off: u64,
}

/// What the plan needs of one process's images.
#[derive(Debug, Clone, Copy)]
pub struct MemImages<'a> {
    /// Its VMAs, in address order.
    pub vmas: &'a [Vma],
    /// Its stored runs, in address order.
    pub runs: &'a [PagemapEntry],
    /// Its pages files ([`Images::pages`]).
    pub pages: &'a [PathBuf],
}

impl<'a> MemImages<'a> {
    /// The memory part of `img`.
    pub fn of(img: &'a Images) -> Self {
        MemImages {
            vmas: &img.mm.vmas,
            runs: &img.runs,
            pages: &img.pages,
        }
    }
}

/// How one process's memory is restored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemPlan {
    /// Per VMA of the process (in image order): kept as inherited from the
    /// parent instead of being mapped again.
    pub inherited: Vec<bool>,
    /// The runs to write, in address order.
    pub fills: Vec<Fill>,
    /// Ranges of inherited VMAs to drop with `MADV_DONTNEED`.
    pub drop: Vec<Range>,
    /// Stored bytes left as inherited because the parent has the same.
    pub same: u64,
}

/// A stored run: `(start, end, file, offset)`.
type Stored = (u64, u64, usize, u64);

/// The runs of a pagemap with their files and offsets.
fn with_offsets(runs: &[PagemapEntry]) -> Vec<Stored> {
    runs.iter()
        .map(|r| {
            let len = r.nr_pages * PAGE;
            (r.vaddr, r.vaddr + len, r.file as usize, r.offset)
        })
        .collect()
}

/// The plan that writes every stored page (a process with no restored
/// parent to inherit from).
pub fn plain(img: MemImages<'_>) -> MemPlan {
    MemPlan {
        inherited: vec![false; img.vmas.len()],
        fills: with_offsets(img.runs)
            .into_iter()
            .map(|(s, e, file, off)| Fill {
                vaddr: s,
                len: e - s,
                file,
                off,
            })
            .collect(),
        drop: Vec::new(),
        same: 0,
    }
}

/// Whether the child's VMA `v` can be kept as inherited from the parent's
/// `p`: a private mapping equal in everything the kernel copies at fork,
/// without advice that keeps it from the child (`MADV_DONTFORK`,
/// `MADV_WIPEONFORK`). mlock(2) is not inherited; the child locks it again.
pub fn inheritable(v: &Vma, p: &Vma) -> bool {
    matches!(v.kind, VmaKind::Anon | VmaKind::File(_))
        && fillable(v)
        && v.start == p.start
        && v.end == p.end
        && v.prot == p.prot
        && v.flags == p.flags
        && v.pgoff == p.pgoff
        && v.kind == p.kind
        && v.madvise == p.madvise
        && v.locked == p.locked
        && !v
            .madvise
            .iter()
            .any(|&a| a == libc::MADV_DONTFORK || a == libc::MADV_WIPEONFORK)
}

/// Whether `[s, e)` is wholly mapped in `live` (sorted, as in maps).
fn covered(live: &[SmapsVma], s: u64, e: u64) -> bool {
    let mut cur = s;
    for m in live {
        if m.start <= cur && m.end > cur {
            cur = m.end;
        }
        if cur >= e {
            return true;
        }
    }
    false
}

fn push(fills: &mut Vec<Fill>, vaddr: u64, len: u64, (file, off): (usize, u64)) {
    if len == 0 {
        return;
    }
    match fills.last_mut() {
        Some(f) if f.vaddr + f.len == vaddr && f.file == file && f.off + f.len == off => {
            f.len += len
        }
        _ => fills.push(Fill {
            vaddr,
            len,
            file,
            off,
        }),
    }
}

/// Plan the memory of `child`, just forked from `parent` (restored from
/// its images), whose address space is now `live` (its `/proc/PID/maps`).
///
/// Errors: a pages image cannot be read (naming it) or is shorter than its
/// pagemap says.
pub fn plan(child: MemImages<'_>, parent: MemImages<'_>, live: &[SmapsVma]) -> Result<MemPlan> {
    plan_with(child, parent, live, PARENT_CACHE_MAX)
}

/// [`plan`], keeping a parent's pages image in memory up to `cache_max`
/// bytes.
fn plan_with(
    child: MemImages<'_>,
    parent: MemImages<'_>,
    live: &[SmapsVma],
    cache_max: u64,
) -> Result<MemPlan> {
    let vmas = child.vmas;
    let inherited: Vec<bool> = vmas
        .iter()
        .map(|v| {
            parent
                .vmas
                .iter()
                .any(|p| inheritable(v, p) && covered(live, v.start, v.end))
        })
        .collect();
    if !inherited.contains(&true) {
        return Ok(plain(child));
    }
    let open = |list: &[PathBuf]| -> Result<Vec<File>> {
        list.iter()
            .map(|p| File::open(p).map_err(|e| Error::file(p, e)))
            .collect()
    };
    let cf = open(child.pages)?;
    let pf = open(parent.pages)?;
    let cruns = with_offsets(child.runs);
    let pruns = with_offsets(parent.runs);
    let mut out = MemPlan {
        inherited,
        ..MemPlan::default()
    };
    // Kept between calls: fresh buffers would be faulted in (and zeroed by
    // the kernel) again for each child, and the parent's pages read again.
    let mut cache = CACHE.with_borrow_mut(std::mem::take);
    let files = (child.pages, &cf[..], parent.pages, &pf[..]);
    let r = compare(&mut out, &mut cache, cache_max, vmas, &cruns, &pruns, files);
    CACHE.with_borrow_mut(|c| *c = cache);
    r?;
    // In inherited VMAs: what the parent stored and the child did not.
    let cranges: Vec<Range> = cruns.iter().map(|&(s, e, _, _)| (s, e)).collect();
    let within = |list: &[Range], s: u64, e: u64| -> Vec<Range> {
        let first = list.partition_point(|r| r.1 <= s);
        list[first..]
            .iter()
            .take_while(|r| r.0 < e)
            .map(|&(a, b)| (a.max(s), b.min(e)))
            .collect()
    };
    let pranges: Vec<Range> = pruns.iter().map(|&(s, e, _, _)| (s, e)).collect();
    for (v, _) in vmas.iter().zip(&out.inherited).filter(|x| *x.1) {
        let theirs = within(&pranges, v.start, v.end);
        if theirs.is_empty() {
            continue;
        }
        let mine = within(&cranges, v.start, v.end);
        for (s, e) in layout::complement(mine, v.start, v.end) {
            out.drop.extend(within(&theirs, s, e));
        }
    }
    out.drop = layout::merge(out.drop);
    Ok(out)
}

/// Which file, as it was when read: device, inode, size, modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

/// What [`plan`] keeps between calls.
#[derive(Default)]
struct Cache {
    /// The last parent's whole pages files, if small.
    parent: Option<(Vec<FileId>, Vec<Vec<u8>>)>,
    /// Chunk buffers for the child's pages and a large parent's.
    cbuf: Vec<u8>,
    pbuf: Vec<u8>,
}

thread_local! {
    static CACHE: std::cell::RefCell<Cache> = std::cell::RefCell::new(Cache::default());
}

fn short() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "shorter than its pagemap says",
    )
}

/// The comparison part of [`plan`]: the fills of every stored run of the
/// child, page by page against the parent's in inherited VMAs.
fn compare(
    out: &mut MemPlan,
    cache: &mut Cache,
    cache_max: u64,
    vmas: &[Vma],
    cruns: &[Stored],
    pruns: &[Stored],
    (cpath, cf, ppath, pf): (&[PathBuf], &[File], &[PathBuf], &[File]),
) -> Result<()> {
    cache.cbuf.resize(CHUNK as usize, 0);
    let mut ids = Vec::with_capacity(pf.len());
    for (f, p) in pf.iter().zip(ppath) {
        let m = f.metadata().map_err(|e| Error::file(p, e))?;
        ids.push(FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
        });
    }
    if cache.parent.as_ref().map(|p| &p.0) != Some(&ids) {
        cache.parent = None;
        if ids.iter().map(|i| i.len).sum::<u64>() <= cache_max {
            let mut all = Vec::with_capacity(ids.len());
            for ((id, f), p) in ids.iter().zip(pf).zip(ppath) {
                let mut whole = vec![0u8; id.len as usize];
                f.read_exact_at(&mut whole, 0)
                    .map_err(|e| Error::file(p, e))?;
                all.push(whole);
            }
            cache.parent = Some((ids, all));
        } else {
            cache.pbuf.resize(CHUNK as usize, 0);
        }
    }
    for &(s, e, cfile, off) in cruns {
        // Runs never cross a mapping boundary, but split anyway. VMAs and
        // runs are sorted and disjoint (checked when the images are read).
        let first = vmas.partition_point(|v| v.end <= s);
        for (i, v) in vmas.iter().enumerate().skip(first) {
            if v.start >= e {
                break;
            }
            let (a, b) = (s.max(v.start), e.min(v.end));
            let coff = off + (a - s);
            if !out.inherited[i] {
                push(&mut out.fills, a, b - a, (cfile, coff));
                continue;
            }
            // The parent's stored pages in [a, b); the rest is written.
            let mut cur = a;
            let pfirst = pruns.partition_point(|r| r.1 <= a);
            for &(ps, pe, pfile, poff) in &pruns[pfirst..] {
                if ps >= b {
                    break;
                }
                let (x, y) = (ps.max(cur), pe.min(b));
                push(&mut out.fills, cur, x - cur, (cfile, coff + (cur - a)));
                let mut at = x;
                while at < y {
                    let n = (y - at).min(CHUNK);
                    let co = coff + (at - a);
                    let c = &mut cache.cbuf[..n as usize];
                    cf[cfile]
                        .read_exact_at(c, co)
                        .map_err(|e| Error::file(&cpath[cfile], e))?;
                    let po = poff + (at - ps);
                    let p = match &cache.parent {
                        Some((_, all)) => all[pfile]
                            .get(po as usize..(po + n) as usize)
                            .ok_or_else(|| Error::file(&ppath[pfile], short()))?,
                        None => {
                            let p = &mut cache.pbuf[..n as usize];
                            pf[pfile]
                                .read_exact_at(p, po)
                                .map_err(|e| Error::file(&ppath[pfile], e))?;
                            p
                        }
                    };
                    for (k, (cp, pp)) in c
                        .chunks_exact(PAGE as usize)
                        .zip(p.chunks_exact(PAGE as usize))
                        .enumerate()
                    {
                        let k = k as u64 * PAGE;
                        if cp == pp {
                            out.same += PAGE;
                        } else {
                            push(&mut out.fills, at + k, PAGE, (cfile, co + k));
                        }
                    }
                    at += n;
                }
                cur = y;
            }
            push(&mut out.fills, cur, b - cur, (cfile, coff + (cur - a)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::validate::tests::vma;
    use super::*;
    use std::path::Path;

    fn anon(s: u64, e: u64) -> Vma {
        vma(s, e, VmaKind::Anon, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
    }

    fn live(list: &[(u64, u64)]) -> Vec<SmapsVma> {
        list.iter()
            .map(|&(s, e)| SmapsVma {
                start: s,
                end: e,
                ..Default::default()
            })
            .collect()
    }

    /// A process with `vmas` and the runs `runs`, whose pages are filled
    /// with the bytes of `bytes` (one per page), in a file in `dir`.
    /// Run i goes to pages file i % 2 (`name`, `name.1`), as a striped
    /// dump would put them.
    struct Img {
        vmas: Vec<Vma>,
        runs: Vec<PagemapEntry>,
        pages: Vec<PathBuf>,
    }

    impl Img {
        fn new(dir: &Path, name: &str, vmas: Vec<Vma>, runs: &[(u64, &[u8])]) -> Img {
            let pages = vec![dir.join(name), dir.join(format!("{name}.1"))];
            let mut data = vec![Vec::new(), Vec::new()];
            let mut list = Vec::new();
            for (i, &(vaddr, bytes)) in runs.iter().enumerate() {
                let file = i % 2;
                let offset = data[file].len() as u64;
                for &b in bytes {
                    data[file].extend(std::iter::repeat_n(b, PAGE as usize));
                }
                list.push(PagemapEntry {
                    vaddr,
                    nr_pages: bytes.len() as u64,
                    file: file as u32,
                    offset,
                });
            }
            for (p, d) in pages.iter().zip(data) {
                std::fs::write(p, d).unwrap();
            }
            Img {
                vmas,
                runs: list,
                pages,
            }
        }

        fn mem(&self) -> MemImages<'_> {
            MemImages {
                vmas: &self.vmas,
                runs: &self.runs,
                pages: &self.pages,
            }
        }
    }

    #[test]
    fn only_changed_pages_written() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (0x100000, 0x100000 + 8 * PAGE);
        let (c, e) = (0x200000, 0x200000 + 2 * PAGE);
        let p = Img::new(
            d.path(),
            "p",
            vec![anon(a, b), anon(c, e)],
            &[(a, &[1, 2, 3, 4, 5, 6]), (c, &[9])],
        );
        // The child changed page 1, has page 6 (the parent's page is zero),
        // dropped pages 4 and 5; its second mapping is larger.
        let mut other = anon(c, e + PAGE);
        other.prot = libc::PROT_READ as u32;
        let ch = Img::new(
            d.path(),
            "c",
            vec![anon(a, b), other],
            &[(a, &[1, 7, 3, 4]), (a + 6 * PAGE, &[8]), (c, &[9])],
        );
        let m = plan(ch.mem(), p.mem(), &live(&[(a, b), (c, e)])).unwrap();
        assert_eq!(m.inherited, vec![true, false]);
        assert_eq!(m.same, 3 * PAGE);
        assert_eq!(
            m.fills,
            vec![
                Fill {
                    vaddr: a + PAGE,
                    len: PAGE,
                    file: 0,
                    off: PAGE
                },
                Fill {
                    vaddr: a + 6 * PAGE,
                    len: PAGE,
                    file: 1,
                    off: 0
                },
                Fill {
                    vaddr: c,
                    len: PAGE,
                    file: 0,
                    off: 4 * PAGE
                },
            ]
        );
        assert_eq!(m.drop, vec![(a + 4 * PAGE, a + 6 * PAGE)]);
        // Not mapped in the child (MADV_DONTFORK at fork): nothing kept.
        let m = plan(ch.mem(), p.mem(), &live(&[(c, e)])).unwrap();
        assert_eq!(m, plain(ch.mem()));
        assert_eq!(m.fills.len(), 3);
        assert_eq!(m.fills[0].len, 4 * PAGE);
    }

    #[test]
    fn kept_parent_pages_give_the_same_plan_and_follow_the_file() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (0x100000, 0x100000 + 4 * PAGE);
        let p = Img::new(d.path(), "p", vec![anon(a, b)], &[(a, &[1, 2, 3, 4])]);
        let ch = Img::new(d.path(), "c", vec![anon(a, b)], &[(a, &[1, 9, 3, 4])]);
        let live = live(&[(a, b)]);
        // Read chunk by chunk (nothing kept), then kept, then from what
        // was kept: the same plan.
        let chunked = plan_with(ch.mem(), p.mem(), &live, 0).unwrap();
        assert_eq!(chunked.same, 3 * PAGE);
        assert_eq!(plan(ch.mem(), p.mem(), &live).unwrap(), chunked);
        assert_eq!(plan(ch.mem(), p.mem(), &live).unwrap(), chunked);
        // The parent's image replaced under the same name: read again.
        let p2 = Img::new(d.path(), "p", vec![anon(a, b)], &[(a, &[1, 9, 3, 4, 6])]);
        let m = plan(ch.mem(), p2.mem(), &live).unwrap();
        assert_eq!(m, plan_with(ch.mem(), p2.mem(), &live, 0).unwrap());
        assert_eq!(m.same, 4 * PAGE);
        // A parent image shorter than its pagemap says is an error naming
        // it, kept or not.
        std::fs::write(&p2.pages[0], vec![1u8; PAGE as usize]).unwrap();
        for max in [0, PARENT_CACHE_MAX] {
            let e = plan_with(ch.mem(), p2.mem(), &live, max).unwrap_err();
            assert!(
                e.to_string().contains(&*p2.pages[0].to_string_lossy()),
                "{e}"
            );
        }
    }

    #[test]
    fn what_is_inherited() {
        let v = anon(0x1000, 0x3000);
        assert!(inheritable(&v, &v));
        let mut w = v.clone();
        w.madvise = vec![libc::MADV_WIPEONFORK];
        assert!(!inheritable(&w, &w));
        let mut w = v.clone();
        w.end = 0x4000;
        assert!(!inheritable(&v, &w));
        let mut w = v.clone();
        w.locked = true;
        assert!(!inheritable(&v, &w));
        let sh = vma(
            0x1000,
            0x3000,
            VmaKind::SharedAnon { shmid: 1 },
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
        );
        assert!(!inheritable(&sh, &sh));
        assert!(covered(
            &live(&[(0, 0x2000), (0x2000, 0x3000)]),
            0x1000,
            0x3000
        ));
        assert!(!covered(
            &live(&[(0, 0x2000), (0x2800, 0x3000)]),
            0x1000,
            0x3000
        ));
    }
}
