//! The address space: mappings from `/proc/PID/smaps`, mm fields from
//! `/proc/PID/stat`, and the pages worth storing, found with
//! `/proc/PID/pagemap` (see Documentation/admin-guide/mm/pagemap.rst) and
//! copied straight into the pages files: through pipes of the task
//! (`super::splice`, one copy) or, for unreadable mappings and when that
//! path fails, by the helper's `DumpPages` (two copies).

use super::files::FileTable;
use crate::error::{Error, Result};
use crate::helper::Helper;
use crate::images::types::{
    FileId, MmEntry, PagemapEntry, PagemapHead, PagemapRecord, PagesFile, Vma, VmaKind,
};
use crate::images::{ImageDir, ImageWriter, Kind};
use crate::proc::{self, SmapsVma, Stat};
use crate::remote::Remote;
use shared_ipc::PageRun;
use std::os::unix::fs::{FileExt, MetadataExt};

/// Page size in bytes.
pub(super) const PAGE: u64 = 4096;
/// pagemap bit 63: page present in RAM.
const PM_PRESENT: u64 = 1 << 63;
/// pagemap bit 62: page swapped out.
const PM_SWAPPED: u64 = 1 << 62;
/// pagemap bit 61: page is a file page or shared anonymous.
const PM_FILE: u64 = 1 << 61;
/// pagemap bits 0-54: page frame number (zero without CAP_SYS_ADMIN).
const PM_PFN: u64 = (1 << 55) - 1;
/// Pagemap entries read per pread (512 KiB of entries, 256 MiB of memory).
const PM_CHUNK: u64 = 64 * 1024;

fn kind_of(v: &SmapsVma, pid: i32, table: &mut FileTable) -> Result<VmaKind> {
    let unsupported = |what: &str| {
        Err(Error::Unsupported(format!(
            "pid {pid}: mapping {:#x}-{:#x} ({}) is {what}, not supported yet",
            v.start, v.end, v.name
        )))
    };
    Ok(match v.name.as_str() {
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" => VmaKind::Vvar,
        "[vvar_vclock]" => VmaKind::VvarVclock,
        "[vsyscall]" => VmaKind::Vsyscall,
        "" | "[heap]" | "[stack]" => {
            if v.shared() {
                VmaKind::SharedAnon { shmid: v.inode }
            } else {
                VmaKind::Anon
            }
        }
        n if n.starts_with("[anon:") => VmaKind::Anon,
        n if n.starts_with("[anon_shmem:") => VmaKind::SharedAnon { shmid: v.inode },
        "/dev/zero (deleted)" if v.shared() => VmaKind::SharedAnon { shmid: v.inode },
        n if n.starts_with("/SYSV") => return unsupported("System V shared memory"),
        n if crate::fdkind::memfd::memfd_name(n).is_some() => {
            let name = crate::fdkind::memfd::memfd_name(n).unwrap_or_default();
            VmaKind::Memfd(table.memfd_mapping(pid, v, name)?)
        }
        n if n.starts_with('/') && n.ends_with(" (deleted)") => {
            let path = n.strip_suffix(" (deleted)").unwrap_or(n);
            VmaKind::Ghost(table.ghost_mapping(pid, v, path)?)
        }
        n if n.starts_with('/') => {
            let md = std::fs::metadata(n).map_err(|e| Error::file(n, e))?;
            if md.ino() != v.inode {
                return Err(Error::Unsupported(format!(
                    "pid {pid}: mapped file {n} was replaced since it was mapped (inode {} now {})",
                    v.inode,
                    md.ino()
                )));
            }
            VmaKind::File(FileId {
                path: n.to_string(),
                size: md.size(),
                dev: md.dev(),
                ino: md.ino(),
                mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            })
        }
        _ => return unsupported("a special kernel mapping"),
    })
}

fn madvise_of(v: &SmapsVma) -> Vec<i32> {
    let mut m = Vec::new();
    for (flag, adv) in [
        ("dd", libc::MADV_DONTDUMP),
        ("dc", libc::MADV_DONTFORK),
        ("hg", libc::MADV_HUGEPAGE),
        ("nh", libc::MADV_NOHUGEPAGE),
        ("mg", libc::MADV_MERGEABLE),
        ("wf", libc::MADV_WIPEONFORK),
        ("rr", libc::MADV_RANDOM),
        ("sr", libc::MADV_SEQUENTIAL),
    ] {
        if v.has_flag(flag) {
            m.push(adv);
        }
    }
    m
}

/// What `VmFlags` of smaps say about a mapping: `MAP_GROWSDOWN` (`gd`),
/// `MAP_NORESERVE` (`nr`: no swap space reserved, e.g. glibc's thread
/// arenas), the madvise(2) advice and mlock (`lo`). See proc(5),
/// /proc/PID/smaps.
fn apply_vm_flags(vma: &mut Vma, v: &SmapsVma) {
    if v.has_flag("gd") {
        vma.flags |= libc::MAP_GROWSDOWN as u32;
    }
    if v.has_flag("nr") {
        vma.flags |= libc::MAP_NORESERVE as u32;
    }
    vma.madvise = madvise_of(v);
    vma.locked = v.has_flag("lo");
}

/// Complete `mm`, collected from /proc/PID/maps (no `VmFlags`), with the
/// `VmFlags` of `smaps`, read later: `smaps` less the mapping exactly at
/// `skip` (the dump's scratch area, a shared mapping that merges with
/// nothing) must list the same mappings as `maps`, which `mm` was built
/// from.
///
/// Errors: [`Error::Unsupported`] when the two lists differ (the address
/// space changed during the dump, e.g. a process outside the dump shares
/// it).
pub fn add_vm_flags(
    pid: i32,
    mm: &mut MmEntry,
    maps: &[SmapsVma],
    smaps: &[SmapsVma],
    skip: (u64, u64),
) -> Result<()> {
    let smaps: Vec<&SmapsVma> = smaps.iter().filter(|v| (v.start, v.end) != skip).collect();
    let same = |a: &SmapsVma, b: &SmapsVma| {
        (a.start, a.end, &a.perms, a.offset, a.dev, a.inode, &a.name)
            == (b.start, b.end, &b.perms, b.offset, b.dev, b.inode, &b.name)
    };
    if smaps.len() != maps.len()
        || mm.vmas.len() != maps.len()
        || !maps.iter().zip(&smaps).all(|(a, b)| same(a, b))
    {
        return Err(Error::Unsupported(format!(
            "pid {pid}: its memory map changed while it was dumped ({} mappings, then {}); is its address space shared with a process outside the dump?",
            maps.len(),
            smaps.len()
        )));
    }
    for (vma, v) in mm.vmas.iter_mut().zip(smaps) {
        apply_vm_flags(vma, v);
    }
    Ok(())
}

/// Build the mm record of `pid` from its smaps (or maps: the `VmFlags`
/// parts are then left empty, see [`add_vm_flags`]), stat and current brk.
///
/// Memfds and deleted files mapped are saved through `table` (once per
/// file, shared with their descriptors).
///
/// Errors: unsupported mappings (SysV shm, special kernel mappings), a
/// mapped memfd or deleted file criu cannot read or that is over
/// `--ghost-limit`, unreadable /proc files.
pub fn collect(
    pid: i32,
    stat: &Stat,
    brk: u64,
    vmas: &[SmapsVma],
    table: &mut FileTable,
) -> Result<MmEntry> {
    let auxv = proc::parse_auxv(&proc::read_bytes(&proc::path(pid, "auxv"))?);
    let exe = proc::read_link(&proc::path(pid, "exe"))?;
    let mut out = Vec::with_capacity(vmas.len());
    for v in vmas {
        let kind = kind_of(v, pid, table)?;
        let mut prot = 0u32;
        if v.read() {
            prot |= libc::PROT_READ as u32;
        }
        if v.write() {
            prot |= libc::PROT_WRITE as u32;
        }
        if v.exec() {
            prot |= libc::PROT_EXEC as u32;
        }
        let mut flags = if v.shared() {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        } as u32;
        if matches!(kind, VmaKind::Anon | VmaKind::SharedAnon { .. }) {
            flags |= libc::MAP_ANONYMOUS as u32;
        }
        let mut vma = Vma {
            start: v.start,
            end: v.end,
            prot,
            flags,
            pgoff: if matches!(
                kind,
                VmaKind::File(_)
                    | VmaKind::SharedAnon { .. }
                    | VmaKind::Memfd(_)
                    | VmaKind::Ghost(_)
            ) {
                v.offset
            } else {
                0
            },
            kind,
            madvise: Vec::new(),
            locked: false,
            name: v.name.clone(),
        };
        apply_vm_flags(&mut vma, v);
        out.push(vma);
    }
    let mm = MmEntry {
        start_code: stat.start_code,
        end_code: stat.end_code,
        start_data: stat.start_data,
        end_data: stat.end_data,
        start_brk: stat.start_brk,
        brk,
        start_stack: stat.start_stack,
        arg_start: stat.arg_start,
        arg_end: stat.arg_end,
        env_start: stat.env_start,
        env_end: stat.env_end,
        auxv,
        exe,
        vmas: out,
    };
    if mm.exe.ends_with(" (deleted)") && mm.deleted_exe().is_none() {
        return Err(Error::Unsupported(format!(
            "pid {pid}: its executable {} is not mapped, so it cannot be saved; restore could not set it",
            mm.exe
        )));
    }
    Ok(mm)
}

/// The page frame number of the shared zero page, if this process can see
/// PFNs (it needs CAP_SYS_ADMIN); zero pages are then not stored. Without
/// it, `write_pages` asks PAGEMAP_SCAN which pages are the zero page.
fn zero_page_pfn() -> Option<u64> {
    // A fresh anonymous read-only mapping that is read maps the zero page.
    let map = crate::sys::map_zero_page()?;
    let pm = std::fs::File::open("/proc/self/pagemap").ok()?;
    let mut e = [0u8; 8];
    pm.read_exact_at(&mut e, map / PAGE * 8).ok()?;
    let ent = u64::from_ne_bytes(e);
    crate::sys::unmap_zero_page(map);
    let pfn = ent & PM_PFN;
    (ent & PM_PRESENT != 0 && pfn != 0).then_some(pfn)
}

/// Whether the pages of a mapping of this kind are stored, and how a
/// pagemap entry is judged worth storing.
fn wants_page(kind: &VmaKind, ent: u64, zero_pfn: Option<u64>) -> bool {
    match kind {
        VmaKind::Anon => {
            if ent & PM_SWAPPED != 0 {
                return true;
            }
            ent & PM_PRESENT != 0 && Some(ent & PM_PFN) != zero_pfn
        }
        // A private file page that is anonymous (not PM_FILE) was written.
        VmaKind::File(_) | VmaKind::Memfd(_) | VmaKind::Ghost(_) => {
            ent & PM_SWAPPED != 0 || (ent & PM_PRESENT != 0 && ent & PM_FILE == 0)
        }
        VmaKind::SharedAnon { .. } => true,
        _ => false,
    }
}

/// The parts of shared memory objects ([`VmaKind::SharedAnon`]) whose
/// pages are already stored, by `shmid`: byte ranges in the object, so a
/// process of the tree that maps memory an earlier one stored does not
/// store it again.
#[derive(Debug, Default)]
pub struct SharedStored {
    ranges: std::collections::HashMap<u64, Vec<(u64, u64)>>,
}

impl SharedStored {
    /// The parts of `[start, end)` of object `shmid` not stored yet, which
    /// are then counted as stored.
    fn take(&mut self, shmid: u64, start: u64, end: u64) -> Vec<(u64, u64)> {
        let done = self.ranges.entry(shmid).or_default();
        let mut left = vec![(start, end)];
        for &(a, b) in done.iter() {
            left = left
                .into_iter()
                .flat_map(|(s, e)| {
                    let mut out = Vec::new();
                    if s < a.min(e) {
                        out.push((s, a.min(e)));
                    }
                    if b.max(s) < e {
                        out.push((b.max(s), e));
                    }
                    out
                })
                .collect();
        }
        done.extend(left.iter().copied());
        left
    }
}

/// Find the runs of pages to store and write them into `pages-PID.img`
/// (and `pages-PID.1.img` above [`super::splice::SPLIT_MIN`] bytes, see
/// [`super::splice::plan`]), writing `pagemap-PID.img` alongside. Returns
/// the bytes stored. Shared anonymous memory already stored for an earlier
/// process of the tree (`shared`) is left out.
///
/// Errors: pagemap unreadable, image write failures (ENOSPC included), or
/// the helper's failure to read the task's memory.
pub fn write_pages(
    h: &mut Helper,
    remote: &Remote,
    mm: &MmEntry,
    dir: &ImageDir,
    shared: &mut SharedStored,
) -> Result<u64> {
    let pid = remote.pid;
    let pm_path = proc::path(pid, "pagemap");
    let pm = std::fs::File::open(&pm_path).map_err(|e| Error::proc(&pm_path, e))?;
    let zero_pfn = zero_page_pfn();
    crate::debug!("zero page pfn: {zero_pfn:?}");

    let mut runs: Vec<PageRun> = Vec::new();
    // Per run: its mapping is readable, so the task can vmsplice it.
    let mut readable: Vec<bool> = Vec::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; (PM_CHUNK * 8) as usize];
    for v in &mm.vmas {
        let can_read = v.prot & libc::PROT_READ as u32 != 0;
        if let VmaKind::SharedAnon { shmid } = v.kind {
            let len = v.end - v.start;
            for (s, e) in shared.take(shmid, v.pgoff, v.pgoff + len) {
                runs.push(PageRun {
                    addr: v.start + (s - v.pgoff),
                    len: e - s,
                });
                readable.push(can_read);
            }
            continue;
        }
        if !matches!(
            v.kind,
            VmaKind::Anon | VmaKind::File(_) | VmaKind::Memfd(_) | VmaKind::Ghost(_)
        ) || (v.kind != VmaKind::Anon && v.flags & libc::MAP_SHARED as u32 != 0)
        {
            continue;
        }
        // Without CAP_SYS_ADMIN the pagemap hides PFNs, so the zero page
        // is found with PAGEMAP_SCAN (or, on older kernels, stored).
        let zeros: Vec<(u64, u64)> = match (zero_pfn, &v.kind) {
            (None, VmaKind::Anon) => {
                crate::pagemap_scan::zero_page_ranges(&pm, v.start, v.end).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let mut zi = 0;
        let mut addr = v.start;
        while addr < v.end {
            let n = ((v.end - addr) / PAGE).min(PM_CHUNK);
            let b = &mut buf[..(n * 8) as usize];
            pm.read_exact_at(b, addr / PAGE * 8)
                .map_err(|e| Error::proc(&pm_path, e))?;
            for (i, c) in b.chunks_exact(8).enumerate() {
                let ent = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
                if !wants_page(&v.kind, ent, zero_pfn) {
                    continue;
                }
                let a = addr + i as u64 * PAGE;
                while zeros.get(zi).is_some_and(|z| z.1 <= a) {
                    zi += 1;
                }
                if zeros.get(zi).is_some_and(|z| z.0 <= a) {
                    continue;
                }
                match runs.last_mut() {
                    // Runs never cross a mapping boundary.
                    Some(r) if r.addr + r.len == a && a != v.start => r.len += PAGE,
                    _ => {
                        runs.push(PageRun { addr: a, len: PAGE });
                        readable.push(can_read);
                    }
                }
            }
            addr += n * PAGE;
        }
    }
    for r in &runs {
        total += r.len;
    }

    let nfiles = super::splice::files_for(total);
    let (plan, sizes) = super::splice::plan(&runs, nfiles);
    let names: Vec<String> = (0..nfiles)
        .map(|k| ImageDir::pages_name_k(pid, k))
        .collect();
    let paths: Vec<std::path::PathBuf> = names.iter().map(|n| dir.file(n)).collect();
    let mut pages = Vec::with_capacity(nfiles);
    for p in &paths {
        pages.push(std::fs::File::create(p).map_err(|e| Error::file(p, e))?);
    }

    let mut w = ImageWriter::create(&dir.pagemap(pid), Kind::Pagemap)?;
    w.record(&PagemapRecord::Head(PagemapHead {
        files: names
            .into_iter()
            .zip(&sizes)
            .map(|(name, &bytes)| PagesFile { name, bytes })
            .collect(),
    }))?;
    for x in &plan {
        w.record(&PagemapRecord::Run(PagemapEntry {
            vaddr: x.addr,
            nr_pages: x.len / PAGE,
            file: x.file as u32,
            offset: x.off,
        }))?;
    }
    w.finish()?;

    let pipes = super::splice::open_pipes(h, remote)?;
    let files: Vec<&std::fs::File> = pages.iter().collect();
    let copied = copy_runs(h, remote, &pipes, &plan, &readable, &files, &paths);
    // The pipe goes away whatever happened: the task keeps its descriptors.
    let closed = super::splice::close_pipes(h, remote, pipes);
    let written = copied?;
    closed?;
    if written != total {
        return Err(Error::Unsupported(format!(
            "pid {pid}: {written} bytes of memory copied, {total} expected"
        )));
    }
    for (f, p) in pages.iter().zip(&paths) {
        f.sync_all().map_err(|e| Error::file(p, e))?;
    }
    Ok(total)
}

/// Copy `pieces` (see [`super::splice::plan`]) to their files and offsets:
/// pieces of readable mappings (`readable`, per run) through the task's
/// pipes when there are some, the others with `DumpPages`. If the pipe path
/// fails, what it did not finish goes through `DumpPages`, each piece in its
/// place. Returns the bytes written.
fn copy_runs(
    h: &mut Helper,
    remote: &Remote,
    pipes: &[super::splice::TaskPipe],
    pieces: &[super::splice::Piece],
    readable: &[bool],
    files: &[&std::fs::File],
    paths: &[std::path::PathBuf],
) -> Result<u64> {
    let pid = remote.pid;
    let mut done = 0u64;
    let mut pipes = Some(pipes).filter(|p| !p.is_empty());
    let mut i = 0;
    while i < pieces.len() {
        let can = readable[pieces[i].run];
        let j = i + pieces[i..]
            .iter()
            .take_while(|x| readable[x.run] == can)
            .count();
        let seg = &pieces[i..j];
        i = j;
        let Some(p) = pipes.filter(|_| can) else {
            done += copy_pieces(h, pid, seg, files, paths)?;
            continue;
        };
        match super::splice::write_runs(h, remote, p, seg, files) {
            Ok(n) => done += n,
            Err((n, rest, e)) => {
                crate::info!(
                    "pid {pid}: the pipe page path failed after {} bytes ({e}); copying the rest",
                    done + n
                );
                done += n;
                pipes = None;
                done += copy_pieces(h, pid, &rest, files, paths)?;
            }
        }
    }
    Ok(done)
}

/// Write `pieces` with `DumpPages`, each group of pieces that follow each
/// other in one file with one request after moving that file's position to
/// the group's offset. Returns the bytes written.
///
/// Errors: seeking the file, or the helper's failure.
fn copy_pieces(
    h: &mut Helper,
    pid: i32,
    pieces: &[super::splice::Piece],
    files: &[&std::fs::File],
    paths: &[std::path::PathBuf],
) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut done = 0u64;
    let mut i = 0;
    while i < pieces.len() {
        let first = pieces[i];
        let mut end = first.off + first.len;
        let mut j = i + 1;
        while j < pieces.len() && pieces[j].file == first.file && pieces[j].off == end {
            end += pieces[j].len;
            j += 1;
        }
        let runs: Vec<PageRun> = pieces[i..j]
            .iter()
            .map(|x| PageRun {
                addr: x.addr,
                len: x.len,
            })
            .collect();
        let mut f = files[first.file];
        f.seek(SeekFrom::Start(first.off))
            .map_err(|e| Error::file(&paths[first.file], e))?;
        done += h.dump_pages(pid, &runs, f)?;
        i = j;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_selection() {
        let file = VmaKind::File(FileId {
            path: "/x".into(),
            size: 0,
            dev: 0,
            ino: 0,
            mtime_ns: 0,
        });
        let zero = Some(77);
        assert!(wants_page(&VmaKind::Anon, PM_PRESENT | 5, zero));
        assert!(!wants_page(&VmaKind::Anon, PM_PRESENT | 77, zero));
        assert!(wants_page(&VmaKind::Anon, PM_SWAPPED, zero));
        assert!(!wants_page(&VmaKind::Anon, 0, zero));
        assert!(wants_page(&file, PM_PRESENT | 5, zero));
        assert!(!wants_page(&file, PM_PRESENT | PM_FILE | 5, zero));
        assert!(!wants_page(&VmaKind::Vdso, PM_PRESENT | 5, zero));
    }

    #[test]
    fn vm_flags_come_from_smaps_read_later() {
        let maps = crate::proc::parse_smaps(
            "1000-3000 rw-p 00000000 00:00 0 \n7000-8000 rw-p 00000000 00:00 0    [stack]\n",
        )
        .unwrap();
        let smaps = crate::proc::parse_smaps(
            "1000-3000 rw-p 00000000 00:00 0 \nVmFlags: rd wr mr mw me lo hg\n\
             5000-6000 rw-s 00000000 00:01 9    /dev/zero (deleted)\nVmFlags: rd wr sh\n\
             7000-8000 rw-p 00000000 00:00 0    [stack]\nVmFlags: rd wr gd\n",
        )
        .unwrap();
        let vma = |v: &SmapsVma| Vma {
            start: v.start,
            end: v.end,
            prot: 3,
            flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
            pgoff: 0,
            kind: VmaKind::Anon,
            madvise: Vec::new(),
            locked: false,
            name: v.name.clone(),
        };
        let mut mm = MmEntry {
            start_code: 0,
            end_code: 0,
            start_data: 0,
            end_data: 0,
            start_brk: 0,
            brk: 0,
            start_stack: 0,
            arg_start: 0,
            arg_end: 0,
            env_start: 0,
            env_end: 0,
            auxv: Vec::new(),
            exe: String::new(),
            vmas: maps.iter().map(vma).collect(),
        };
        let before = mm.clone();
        // The scratch area is left out; anything else that differs is refused.
        let e = add_vm_flags(7, &mut mm.clone(), &maps, &smaps, (0x5000, 0x5001)).unwrap_err();
        assert!(e.to_string().contains("memory map changed"), "{e}");
        assert!(add_vm_flags(7, &mut mm.clone(), &maps, &smaps[..1], (0x5000, 0x6000)).is_err());
        add_vm_flags(7, &mut mm, &maps, &smaps, (0x5000, 0x6000)).unwrap();
        assert!(mm.vmas[0].locked);
        assert_eq!(mm.vmas[0].madvise, vec![libc::MADV_HUGEPAGE]);
        assert_eq!(mm.vmas[0].flags, before.vmas[0].flags);
        assert!(!mm.vmas[1].locked);
        assert_eq!(
            mm.vmas[1].flags,
            before.vmas[1].flags | libc::MAP_GROWSDOWN as u32
        );
    }

    #[test]
    fn shared_memory_stored_once() {
        let mut s = SharedStored::default();
        assert_eq!(s.take(7, 0, 0x4000), vec![(0, 0x4000)]);
        assert_eq!(s.take(7, 0, 0x4000), vec![]);
        assert_eq!(s.take(7, 0x1000, 0x6000), vec![(0x4000, 0x6000)]);
        assert_eq!(s.take(8, 0x1000, 0x2000), vec![(0x1000, 0x2000)]);
        let mut s = SharedStored::default();
        s.take(1, 0x2000, 0x3000);
        assert_eq!(s.take(1, 0, 0x5000), vec![(0, 0x2000), (0x3000, 0x5000)]);
    }
}
