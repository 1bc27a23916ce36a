//! Rebuilding the address space of a stub with injected system calls: the
//! trampoline, clearing the stub's own mappings, moving the vDSO, mapping
//! every dumped VMA, filling pages with large `pread64`s, and the
//! `PR_SET_MM_MAP` fields.

use super::cow::Fill;
use super::files::FileSender;
use super::layout::{self, Range};
use super::validate::{fillable, PAGE};
use crate::error::{Error, Result};
use crate::helper::Helper;
use crate::images::types::{MmEntry, Vma, VmaKind};
use crate::proc::SmapsVma;
use crate::remote::{errno_of, Batch, Remote};
use crate::{debug, info, warn};
use shared_ipc::TASK_SIZE;
use std::path::{Path, PathBuf};

/// Pages of the trampoline area: the first holds the `syscall` gadget
/// (R-X), the rest is the scratch area (R-W).
pub const TRAMPOLINE_PAGES: u64 = 16;

/// Lowest address we place anything at (the usual `vm.mmap_min_addr`).
const MIN_ADDR: u64 = 0x10000;

/// `sizeof(struct prctl_mm_map)`.
pub const MM_MAP_SIZE: usize = 104;

/// The three kernel-provided areas that move with the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// `[vdso]`.
    Vdso,
    /// `[vvar]`.
    Vvar,
    /// `[vvar_vclock]`.
    VvarVclock,
}

impl Special {
    const ALL: [Special; 3] = [Special::Vvar, Special::VvarVclock, Special::Vdso];

    fn name(self) -> &'static str {
        match self {
            Special::Vdso => "[vdso]",
            Special::Vvar => "[vvar]",
            Special::VvarVclock => "[vvar_vclock]",
        }
    }

    fn of_kind(k: &VmaKind) -> Option<Special> {
        match k {
            VmaKind::Vdso => Some(Special::Vdso),
            VmaKind::Vvar => Some(Special::Vvar),
            VmaKind::VvarVclock => Some(Special::VvarVclock),
            _ => None,
        }
    }

    fn of_name(n: &str) -> Option<Special> {
        Special::ALL.into_iter().find(|s| s.name() == n)
    }
}

/// Where each special area is in a live layout (`/proc/PID/maps`).
pub fn live_specials(maps: &[SmapsVma]) -> Vec<(Special, Range)> {
    maps.iter()
        .filter_map(|m| Special::of_name(&m.name).map(|s| (s, (m.start, m.end))))
        .collect()
}

/// Where each special area was in the dumped layout.
pub fn image_specials(vmas: &[Vma]) -> Vec<(Special, Range)> {
    vmas.iter()
        .filter_map(|v| Special::of_kind(&v.kind).map(|s| (s, (v.start, v.end))))
        .collect()
}

fn find(list: &[(Special, Range)], s: Special) -> Option<Range> {
    list.iter().find(|x| x.0 == s).map(|x| x.1)
}

/// The dumped vDSO areas must have the sizes this kernel gives (`current`
/// is `/proc/self/maps`), since the kernel's vDSO code finds its data at
/// fixed offsets.
///
/// Errors: [`Error::Refused`] naming the area and both sizes.
pub fn check_vdso_layout(vmas: &[Vma], current: &[SmapsVma]) -> Result<()> {
    let cur = live_specials(current);
    for (s, (a, b)) in image_specials(vmas) {
        let now = find(&cur, s).map(|(x, y)| y - x);
        if now != Some(b - a) {
            let now = now.map_or("none".to_string(), |n| format!("{n} bytes"));
            return Err(Error::Refused(format!(
                "the images come from a different kernel vDSO layout: {} was {} bytes, this kernel's is {now}; restore on the kernel that made the dump",
                s.name(),
                b - a
            )));
        }
    }
    Ok(())
}

/// Ranges used by the dumped layout (without `[vsyscall]`).
fn dumped_ranges(vmas: &[Vma]) -> Vec<Range> {
    vmas.iter()
        .filter(|v| v.kind != VmaKind::Vsyscall)
        .map(|v| (v.start, v.end))
        .collect()
}

/// Ranges used by a live layout below `TASK_SIZE`.
fn live_ranges(maps: &[SmapsVma]) -> Vec<Range> {
    maps.iter()
        .filter(|m| m.end <= TASK_SIZE)
        .map(|m| (m.start, m.end))
        .collect()
}

/// Pick the trampoline area: free in every range of `occupied` (the
/// dumped layouts of the whole tree, the root stub's live one and the
/// shared objects), so that one area serves every process: a child forked
/// from a restored parent inherits it.
pub fn plan_trampoline(occupied: Vec<Range>) -> Option<Range> {
    let len = TRAMPOLINE_PAGES * PAGE;
    layout::find_hole(occupied, len, MIN_ADDR, TASK_SIZE).map(|a| (a, a + len))
}

/// The trampoline of `pid` at `tramp` as a [`Remote`]: its first page holds
/// the gadget, the rest is the scratch area.
pub fn trampoline_remote(pid: i32, tramp: Range) -> Remote {
    Remote {
        pid,
        scratch: tramp.0 + PAGE,
        scratch_len: tramp.1 - tramp.0 - PAGE,
    }
}

/// Map the trampoline at `(t, end)` (from [`plan_trampoline`]) in the root
/// stub (through the stub's current gadget), put the `syscall` instruction
/// at its start and switch to it. The processes forked from it later
/// inherit it.
///
/// Errors: an injected call failed, or the area was taken.
pub fn setup_trampoline(h: &mut Helper, pid: i32, (t, end): Range) -> Result<Remote> {
    let boot = Remote::new(pid);
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
    let got = boot.call(
        h,
        &format!("mmap(trampoline {t:#x})"),
        libc::SYS_mmap,
        [
            t,
            end - t,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            flags as u64,
            u64::MAX,
            0,
        ],
    )?;
    if got != t {
        return Err(Error::Unsupported(format!(
            "pid {pid}: trampoline mapped at {got:#x} instead of {t:#x}"
        )));
    }
    h.write_memory(pid, t, &[0x0f, 0x05])?;
    boot.call(
        h,
        "mprotect(trampoline gadget page)",
        libc::SYS_mprotect,
        [t, PAGE, (libc::PROT_READ | libc::PROT_EXEC) as u64, 0, 0, 0],
    )?;
    h.set_gadget(pid, t)?;
    info!("pid {pid}: trampoline at {t:#x}-{end:#x}");
    Ok(trampoline_remote(pid, (t, end)))
}

/// A shared anonymous memory object of the checkpoint (every mapping with
/// one [`VmaKind::SharedAnon`] `shmid`), re-created once in the root stub
/// before the other processes are forked from it, so that every stub
/// inherits the same object (see fork(2): `MAP_SHARED` mappings are shared
/// with the child). Each process then maps its parts of it at their dumped
/// addresses with `mremap(old_size = 0)`, which for a shared mapping makes a
/// second mapping of the same pages (see mremap(2)), and unmaps the whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedObject {
    /// The dumped object's id.
    pub shmid: u64,
    /// Where it is mapped whole in every stub until they are restored.
    pub addr: u64,
    /// Its size in bytes: the end of the furthest mapping of it.
    pub size: u64,
}

impl SharedObject {
    /// The temporary whole mapping.
    pub fn range(&self) -> Range {
        (self.addr, self.addr + self.size)
    }
}

/// Every shared memory object mapped in `mms`, with its size, by `shmid`.
pub fn shared_sizes<'a>(mms: impl IntoIterator<Item = &'a MmEntry>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for v in mms.into_iter().flat_map(|m| m.vmas.iter()) {
        if let VmaKind::SharedAnon { shmid } = v.kind {
            let end = v.pgoff + (v.end - v.start);
            match out.iter_mut().find(|o| o.0 == shmid) {
                Some(o) => o.1 = o.1.max(end),
                None => out.push((shmid, end)),
            }
        }
    }
    out
}

/// Place the shared objects `sizes` (from [`shared_sizes`]) one after the
/// other, a free page between them, in a hole of `occupied` (the dumped
/// layouts of every process and the root stub's live one).
pub fn plan_shared(sizes: &[(u64, u64)], occupied: Vec<Range>) -> Option<Vec<SharedObject>> {
    if sizes.is_empty() {
        return Some(Vec::new());
    }
    let total = sizes
        .iter()
        .try_fold(0u64, |t, &(_, s)| t.checked_add(s.checked_add(PAGE)?))?;
    let mut at = layout::find_hole(occupied, total, MIN_ADDR, TASK_SIZE)?;
    Some(
        sizes
            .iter()
            .map(|&(shmid, size)| {
                let o = SharedObject {
                    shmid,
                    addr: at,
                    size,
                };
                at += size + PAGE;
                o
            })
            .collect(),
    )
}

/// Create the shared objects in the root stub `r` (still a copy of the
/// helper, before any other process is forked from it).
///
/// Errors: an injected mmap failed or landed elsewhere.
pub fn create_shared(h: &mut Helper, r: &Remote, objs: &[SharedObject]) -> Result<()> {
    for o in objs {
        let what = format!(
            "mmap(shared memory {} at {:#x}, {} bytes)",
            o.shmid, o.addr, o.size
        );
        let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
        let got = r.call(
            h,
            &what,
            libc::SYS_mmap,
            [
                o.addr,
                o.size,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                flags as u64,
                u64::MAX,
                0,
            ],
        )?;
        if got != o.addr {
            return Err(Error::Unsupported(format!(
                "pid {}: {what} landed at {got:#x}",
                r.pid
            )));
        }
    }
    if !objs.is_empty() {
        info!(
            "pid {}: {} shared memory objects created for the tree",
            r.pid,
            objs.len()
        );
    }
    Ok(())
}

/// Unmap the whole temporary mappings of the shared objects (after
/// [`map_vmas`] mapped the parts this process uses).
///
/// Errors: an injected munmap failed.
pub fn unmap_shared(h: &mut Helper, r: &Remote, objs: &[SharedObject]) -> Result<()> {
    for o in objs {
        r.call(
            h,
            &format!("munmap(shared memory {} at {:#x})", o.shmid, o.addr),
            libc::SYS_munmap,
            [o.addr, o.size, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// Unmap every mapping of the stub but the trampoline, the vDSO areas and
/// `keep` (the shared objects).
///
/// Errors: an injected munmap failed.
pub fn unmap_stub(
    h: &mut Helper,
    r: &Remote,
    tramp: Range,
    stub: &[SmapsVma],
    also: &[Range],
) -> Result<()> {
    let mut keep: Vec<Range> = live_specials(stub).into_iter().map(|x| x.1).collect();
    keep.push(tramp);
    keep.extend_from_slice(also);
    let mapped = live_ranges(stub);
    for (s, e) in layout::complement(keep, 0, TASK_SIZE) {
        if !layout::overlaps(&mapped, s, e) {
            continue;
        }
        r.call(
            h,
            &format!("munmap({s:#x}-{e:#x})"),
            libc::SYS_munmap,
            [s, e - s, 0, 0, 0, 0],
        )?;
    }
    info!("pid {}: the stub's own mappings are gone", r.pid);
    Ok(())
}

fn mremap(h: &mut Helper, r: &Remote, from: u64, len: u64, to: u64, what: &str) -> Result<()> {
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    let got = r.call(
        h,
        &format!("mremap({what} {from:#x} -> {to:#x})"),
        libc::SYS_mremap,
        [from, len, len, flags, to, 0],
    )?;
    if got != to {
        return Err(Error::Unsupported(format!(
            "pid {}: {what} moved to {got:#x} instead of {to:#x}",
            r.pid
        )));
    }
    Ok(())
}

/// Move the stub's vDSO areas to their dumped addresses (through a free
/// temporary area, avoiding `also` too, since mremap refuses overlapping
/// moves), and unmap the ones the dumped task did not have.
///
/// Errors: no temporary hole, or an injected call failed.
pub fn move_specials(
    h: &mut Helper,
    r: &Remote,
    vmas: &[Vma],
    tramp: Range,
    stub: &[SmapsVma],
    also: &[Range],
) -> Result<()> {
    let live = live_specials(stub);
    let want = image_specials(vmas);
    let mut moves = Vec::new();
    for &(s, (a, b)) in &live {
        match find(&want, s) {
            Some((x, _)) => moves.push((s, a, b - a, x)),
            None => {
                info!(
                    "pid {}: the dumped task had no {}; unmapping it",
                    r.pid,
                    s.name()
                );
                r.call(
                    h,
                    &format!("munmap({})", s.name()),
                    libc::SYS_munmap,
                    [a, b - a, 0, 0, 0, 0],
                )?;
            }
        }
    }
    if moves.iter().all(|&(_, from, _, to)| from == to) {
        return Ok(());
    }
    let total: u64 = moves.iter().map(|m| m.2).sum();
    let mut occ = dumped_ranges(vmas);
    occ.extend(live.iter().map(|x| x.1));
    occ.push(tramp);
    occ.extend_from_slice(also);
    let tmp = layout::find_hole(occ, total, MIN_ADDR, TASK_SIZE).ok_or_else(|| {
        Error::Unsupported(format!(
            "pid {}: no free area to move the vDSO through",
            r.pid
        ))
    })?;
    let mut off = 0;
    for &(s, from, len, _) in &moves {
        mremap(h, r, from, len, tmp + off, s.name())?;
        off += len;
    }
    let mut off = 0;
    for &(s, _, len, to) in &moves {
        mremap(h, r, tmp + off, len, to, s.name())?;
        off += len;
        debug!("pid {}: {} now at {to:#x}", r.pid, s.name());
    }
    info!("pid {}: vDSO areas moved to their dumped addresses", r.pid);
    Ok(())
}

/// Open `path` in the task; returns the new descriptor.
///
/// Errors: the injected openat failed (naming the path and errno).
pub fn open_in(h: &mut Helper, r: &Remote, path: &str, flags: i32) -> Result<i32> {
    let p = r.put_cstr(h, 0, path)?;
    let fd = r.call(
        h,
        &format!("openat({path})"),
        libc::SYS_openat,
        [libc::AT_FDCWD as i64 as u64, p, flags as u64, 0, 0, 0],
    )?;
    Ok(fd as i32)
}

/// Close a descriptor in the task.
///
/// Errors: the injected close failed.
pub fn close_in(h: &mut Helper, r: &Remote, fd: i32) -> Result<()> {
    r.call(
        h,
        &format!("close({fd})"),
        libc::SYS_close,
        [fd as u64, 0, 0, 0, 0, 0],
    )?;
    Ok(())
}

/// Open `path` in the task and move it to a close-on-exec descriptor at
/// `min` or above, out of the way of the descriptors to restore.
///
/// Errors: an injected call failed.
pub fn open_high(h: &mut Helper, r: &Remote, path: &str, flags: i32, min: i32) -> Result<i32> {
    let fd = open_in(h, r, path, flags | libc::O_CLOEXEC)?;
    if fd >= min {
        return Ok(fd);
    }
    let high = r.call(
        h,
        &format!("fcntl({fd}, F_DUPFD_CLOEXEC, {min})"),
        libc::SYS_fcntl,
        [fd as u64, libc::F_DUPFD_CLOEXEC as u64, min as u64, 0, 0, 0],
    )?;
    close_in(h, r, fd)?;
    Ok(high as i32)
}

/// For each VMA, whether pages are written into it.
pub fn vmas_with_pages(vmas: &[Vma], fills: &[Fill]) -> Vec<bool> {
    let ranges: Vec<Range> = fills.iter().map(|f| (f.vaddr, f.vaddr + f.len)).collect();
    vmas.iter()
        .map(|v| fillable(v) && layout::overlaps(&ranges, v.start, v.end))
        .collect()
}

/// The protection a VMA is first mapped with: writable if pages are to be
/// written into it.
pub fn map_prot(v: &Vma, has_pages: bool) -> u32 {
    if has_pages {
        v.prot | libc::PROT_WRITE as u32
    } else {
        v.prot
    }
}

/// The flags a VMA is mapped with (always `MAP_FIXED`).
pub fn map_flags(v: &Vma) -> u32 {
    let keep =
        (libc::MAP_SHARED | libc::MAP_PRIVATE | libc::MAP_GROWSDOWN | libc::MAP_NORESERVE) as u32;
    let base = v.flags & keep | libc::MAP_FIXED as u32;
    match v.kind {
        VmaKind::Anon | VmaKind::SharedAnon { .. } => base | libc::MAP_ANONYMOUS as u32,
        _ => base,
    }
}

/// Map every dumped VMA but the vDSO areas, `[vsyscall]` and the ones
/// `inherited` from the parent (already in place, see [`super::cow`]; they
/// only get write access if `fills` writes into them), then re-apply
/// madvise and mlock. Shared anonymous memory is mapped from its object in
/// `shared` (see [`SharedObject`]). Returns, per VMA, whether its protection
/// differs from the dumped one (widened for page filling, or the shared
/// object's read-write).
///
/// Memfds and deleted files are made (or found) in criu by `sender` and
/// passed to the task to be mapped, so that every mapping and descriptor of
/// one of them is the same file again.
///
/// Errors: an injected call failed (opening a mapped file names the path),
/// a shared mapping's object is not in `shared`, or a memfd or deleted
/// file could not be made.
#[allow(clippy::too_many_arguments)]
pub fn map_vmas(
    h: &mut Helper,
    r: &Remote,
    mm: &MmEntry,
    fills: &[Fill],
    shared: &[SharedObject],
    inherited: &[bool],
    sender: &mut FileSender<'_>,
) -> Result<Vec<bool>> {
    let pages = vmas_with_pages(&mm.vmas, fills);
    let mut widened = vec![false; mm.vmas.len()];
    // Each mapped file is opened once (a library has four or five
    // mappings) and closed after the last mapping.
    let mut open_files: Vec<(String, i32, i32)> = Vec::new();
    let res = map_all(
        h,
        r,
        mm,
        &pages,
        shared,
        inherited,
        &mut widened,
        &mut open_files,
        sender,
    );
    for &(_, _, fd) in &open_files {
        close_in(h, r, fd)?;
    }
    res?;
    info!("pid {}: {} mappings in place", r.pid, mm.vmas.len());
    Ok(widened)
}

/// Calls of [`map_all`] in a batch, with the address each `mmap` must
/// land at (`None` for a call whose result is not checked).
struct MapBatch {
    b: Batch,
    lands: Vec<Option<(u64, String)>>,
}

impl MapBatch {
    fn call(&mut self, what: String, nr: i64, args: [u64; 6], lands_at: Option<u64>) {
        self.lands.push(lands_at.map(|a| (a, what.clone())));
        self.b.call(what, nr, args);
    }

    /// Run what is queued; every `mmap` must have landed where asked.
    fn run(&mut self, h: &mut Helper) -> Result<()> {
        let got = self.b.run(h)?;
        for (got, want) in got.into_iter().zip(std::mem::take(&mut self.lands)) {
            if let Some((at, what)) = want {
                if got != at {
                    return Err(Error::Unsupported(format!(
                        "pid {}: {what} landed at {got:#x}",
                        self.b.pid()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The mappings of [`map_vmas`], in order. `mmap` and `mprotect` calls go
/// in batches; the batch runs first before anything that needs an answer
/// (opening or receiving a file) or tolerates a failure (advice).
#[allow(clippy::too_many_arguments)]
fn map_all(
    h: &mut Helper,
    r: &Remote,
    mm: &MmEntry,
    pages: &[bool],
    shared: &[SharedObject],
    inherited: &[bool],
    widened: &mut [bool],
    open_files: &mut Vec<(String, i32, i32)>,
    sender: &mut FileSender<'_>,
) -> Result<()> {
    let mut mb = MapBatch {
        b: Batch::new(r),
        lands: Vec::new(),
    };
    for (i, v) in mm.vmas.iter().enumerate() {
        let advised = !v.madvise.is_empty() || v.locked;
        if inherited.get(i) == Some(&true) {
            let prot = map_prot(v, pages[i]);
            if prot != v.prot {
                widened[i] = true;
                mb.call(
                    format!("mprotect({:#x}-{:#x}, {prot:#x})", v.start, v.end),
                    libc::SYS_mprotect,
                    [v.start, v.end - v.start, prot as u64, 0, 0, 0],
                    None,
                );
            }
            if advised {
                mb.run(h)?;
                apply_advice(h, r, v)?;
            }
            continue;
        }
        if let VmaKind::SharedAnon { shmid } = v.kind {
            mb.run(h)?;
            map_shared(h, r, v, shmid, shared)?;
            widened[i] = v.prot != (libc::PROT_READ | libc::PROT_WRITE) as u32;
            apply_advice(h, r, v)?;
            continue;
        }
        if !matches!(
            v.kind,
            VmaKind::Anon | VmaKind::File(_) | VmaKind::Memfd(_) | VmaKind::Ghost(_)
        ) {
            continue;
        }
        let prot = map_prot(v, pages[i]);
        widened[i] = prot != v.prot;
        let flags = map_flags(v);
        let what = format!("mmap({:#x}-{:#x} {})", v.start, v.end, v.name);
        let (fd, pgoff) = match &v.kind {
            VmaKind::File(_) | VmaKind::Memfd(_) | VmaKind::Ghost(_) => {
                let shared = v.flags & libc::MAP_SHARED as u32 != 0;
                let writable = v.prot & libc::PROT_WRITE as u32 != 0;
                let mode = if shared && writable {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                };
                let key = match &v.kind {
                    VmaKind::File(f) => f.path.clone(),
                    VmaKind::Memfd(m) => format!("memfd inode {}", m.ino),
                    VmaKind::Ghost(g) => format!("ghost {}", g.data),
                    _ => String::new(),
                };
                let fd = match open_files.iter().find(|(p, m, _)| *p == key && *m == mode) {
                    Some(&(_, _, fd)) => fd,
                    None => {
                        mb.run(h)?;
                        let fd = match &v.kind {
                            VmaKind::File(f) => open_in(h, r, &f.path, mode | libc::O_CLOEXEC)?,
                            _ => {
                                let mine = sender.mapping_file(r.pid, v)?;
                                sender.pass(h, r, &mine)?
                            }
                        };
                        open_files.push((key, mode, fd));
                        fd
                    }
                };
                (fd as u64, v.pgoff)
            }
            _ => (u64::MAX, 0),
        };
        mb.call(
            what,
            libc::SYS_mmap,
            [
                v.start,
                v.end - v.start,
                prot as u64,
                flags as u64,
                fd,
                pgoff,
            ],
            Some(v.start),
        );
        if advised {
            mb.run(h)?;
            apply_advice(h, r, v)?;
        }
    }
    mb.run(h)
}

/// Map the part of shared object `shmid` that `v` maps at `v.start`: an
/// `mremap` of its temporary whole mapping with `old_size` 0, which leaves
/// that in place and maps the same pages again (see mremap(2)).
fn map_shared(
    h: &mut Helper,
    r: &Remote,
    v: &Vma,
    shmid: u64,
    shared: &[SharedObject],
) -> Result<()> {
    let len = v.end - v.start;
    let obj = shared
        .iter()
        .find(|o| o.shmid == shmid && v.pgoff + len <= o.size)
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "pid {}: mapping {:#x}-{:#x} of shared memory {shmid} has no object to map",
                r.pid, v.start, v.end
            ))
        })?;
    let from = obj.addr + v.pgoff;
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    let what = format!(
        "mremap(shared memory {shmid} +{:#x} -> {:#x}-{:#x})",
        v.pgoff, v.start, v.end
    );
    let got = r.call(
        h,
        &what,
        libc::SYS_mremap,
        [from, 0, len, flags, v.start, 0],
    )?;
    if got != v.start {
        return Err(Error::Unsupported(format!(
            "pid {}: {what} landed at {got:#x}",
            r.pid
        )));
    }
    Ok(())
}

fn apply_advice(h: &mut Helper, r: &Remote, v: &Vma) -> Result<()> {
    let len = v.end - v.start;
    for &a in &v.madvise {
        let ret = r.raw(h, libc::SYS_madvise, [v.start, len, a as u64, 0, 0, 0])?;
        if let Some(e) = errno_of(ret) {
            warn!(
                "pid {}: madvise({:#x}-{:#x}, {a}) failed: {e}; going on without it",
                r.pid, v.start, v.end
            );
        }
    }
    if v.locked {
        let ret = r.raw(h, libc::SYS_mlock, [v.start, len, 0, 0, 0, 0])?;
        match errno_of(ret) {
            None => {}
            Some(e @ (nix::errno::Errno::EPERM | nix::errno::Errno::ENOMEM)) => warn!(
                "pid {}: mlock({:#x}-{:#x}) failed: {e}; the mapping stays unlocked",
                r.pid, v.start, v.end
            ),
            Some(errno) => {
                return Err(Error::Injected {
                    pid: r.pid,
                    call: format!("mlock({:#x}-{:#x})", v.start, v.end),
                    errno,
                })
            }
        }
    }
    Ok(())
}

/// Most iovecs one preadv(2) takes (`IOV_MAX`, see writev(2)).
const MAX_IOV: u64 = 1024;

/// `MADV_POPULATE_WRITE` (see madvise(2)).
const MADV_POPULATE_WRITE: u64 = 23;
/// Runs at least this long (bytes) are pre-populated before being read.
const POPULATE_MIN: u64 = 64 * 1024;

/// Drop the pages of `ranges` (parts of inherited VMAs the parent stored
/// and this process did not) with `MADV_DONTNEED`, so that they read as
/// zeros (anonymous memory) or as the file (a private file mapping), see
/// madvise(2).
///
/// Errors: an injected madvise failed.
pub fn drop_pages(h: &mut Helper, r: &Remote, ranges: &[Range]) -> Result<()> {
    for &(s, e) in ranges {
        r.call(
            h,
            &format!("madvise({s:#x}-{e:#x}, MADV_DONTNEED)"),
            libc::SYS_madvise,
            [s, e - s, libc::MADV_DONTNEED as u64, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// Read every run of `fills` from its pages file (file k open in the task
/// as `fds[k]`, named `pages[k]`) straight into place: a large run with one `pread64` (after
/// `MADV_POPULATE_WRITE`), small runs that follow each other in the file
/// with one `preadv` of up to [`MAX_IOV`] of them (the iovec array in the
/// scratch area), so a process of a few hundred small runs costs a few
/// calls; short reads go on run by run.
///
/// Errors: an injected call failed, or the file ended early.
pub fn fill_pages(
    h: &mut Helper,
    r: &Remote,
    fds: &[i32],
    fills: &[Fill],
    pages: &[PathBuf],
) -> Result<()> {
    let max_iov = (r.scratch_len / 16).min(MAX_IOV) as usize;
    let mut total = 0u64;
    let mut i = 0;
    while i < fills.len() {
        let f = &fills[i];
        if f.len < POPULATE_MIN && max_iov > 1 {
            let mut n = 1;
            while n < max_iov
                && i + n < fills.len()
                && fills[i + n].len < POPULATE_MIN
                && fills[i + n].file == f.file
                && fills[i + n].off == fills[i + n - 1].off + fills[i + n - 1].len
            {
                n += 1;
            }
            let group = &fills[i..i + n];
            let glen: u64 = group.iter().map(|x| x.len).sum();
            let iov: Vec<u8> = group
                .iter()
                .flat_map(|x| [x.vaddr, x.len])
                .flat_map(|w| w.to_le_bytes())
                .collect();
            let iov_addr = r.put(h, 0, &iov)?;
            let what = format!(
                "preadv({}, {n} runs, {glen} bytes, {})",
                pages[f.file].display(),
                f.off
            );
            let got = r.call(
                h,
                &what,
                libc::SYS_preadv,
                [fds[f.file] as u64, iov_addr, n as u64, f.off, 0, 0],
            )?;
            let mut left = got.min(glen);
            for x in group {
                let have = left.min(x.len);
                left -= have;
                if have < x.len {
                    pread_run(h, r, fds[x.file], &pages[x.file], x, have)?;
                }
            }
            total += glen;
            i += n;
            continue;
        }
        if f.len >= POPULATE_MIN {
            // Allocate the run's pages in one call rather than one page fault
            // per page inside pread64 (see madvise(2), MADV_POPULATE_WRITE,
            // Linux 5.14+). Only a speed-up: a refusal changes nothing.
            let _ = r.raw(
                h,
                libc::SYS_madvise,
                [f.vaddr, f.len, MADV_POPULATE_WRITE, 0, 0, 0],
            );
        }
        pread_run(h, r, fds[f.file], &pages[f.file], f, 0)?;
        total += f.len;
        i += 1;
    }
    info!(
        "pid {}: {} runs, {total} bytes of pages restored",
        r.pid,
        fills.len()
    );
    Ok(())
}

/// Read bytes `done..` of fill `f` with as many pread64 calls as the
/// kernel needs.
///
/// Errors: the file ends first (damaged image), or a call failed.
fn pread_run(
    h: &mut Helper,
    r: &Remote,
    fd: i32,
    pages: &Path,
    f: &Fill,
    mut done: u64,
) -> Result<()> {
    let (vaddr, len, off) = (f.vaddr, f.len, f.off);
    while done < len {
        let what = format!(
            "pread64({}, {:#x}, {}, {})",
            pages.display(),
            vaddr + done,
            len - done,
            off + done
        );
        let n = r.call(
            h,
            &what,
            libc::SYS_pread64,
            [fd as u64, vaddr + done, len - done, off + done, 0, 0],
        )?;
        if n == 0 {
            return Err(Error::Image(crate::images::ImageError::invalid(
                pages,
                format!(
                    "ends at {} bytes, before the pages of {:#x}",
                    off + done,
                    vaddr + done
                ),
            )));
        }
        done += n;
    }
    Ok(())
}

/// Put back the dumped protection of every VMA whose protection
/// [`map_vmas`] changed.
///
/// Errors: an injected mprotect failed.
pub fn restore_prots(h: &mut Helper, r: &Remote, vmas: &[Vma], widened: &[bool]) -> Result<()> {
    let mut b = Batch::new(r);
    for (v, _) in vmas.iter().zip(widened).filter(|x| *x.1) {
        b.call(
            format!("mprotect({:#x}-{:#x}, {:#x})", v.start, v.end, v.prot),
            libc::SYS_mprotect,
            [v.start, v.end - v.start, v.prot as u64, 0, 0, 0],
        );
    }
    b.run(h)?;
    Ok(())
}

/// `struct prctl_mm_map` (see prctl(2), `PR_SET_MM_MAP`).
pub fn encode_mm_map(mm: &MmEntry, auxv_addr: u64, exe_fd: i32) -> Vec<u8> {
    let mut b = Vec::with_capacity(MM_MAP_SIZE);
    for w in mm.prctl_fields().into_iter().chain([auxv_addr]) {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(&((mm.auxv.len() * 8) as u32).to_le_bytes());
    b.extend_from_slice(&(exe_fd as u32).to_le_bytes());
    b
}

/// Set code/data/brk/stack/args/env, auxv and the executable with
/// `PR_SET_MM_MAP`. `exe_inherited`: the task was forked from a restored
/// parent with the same executable, whose exe link it inherited (see
/// fork(2)); it is left as it is, since the kernel refuses to change the
/// link while the old file is still mapped (EBUSY, see prctl(2)).
///
/// A deleted executable (`PATH (deleted)`) is the file made again for its
/// mapping, from `sender`.
///
/// Errors: opening the executable or the prctl failed.
///
/// In setuid mode (the helper's caller is not root) the stub runs with the
/// caller's credentials and lacks `CAP_CHECKPOINT_RESTORE`, which the kernel
/// requires to change the exe link: the map is set with `exe_fd = -1` and
/// `/proc/PID/exe` keeps pointing at `criu-helper` (see SECURITY.md).
pub fn set_mm_fields(
    h: &mut Helper,
    r: &Remote,
    mm: &MmEntry,
    exe_inherited: bool,
    sender: &mut FileSender<'_>,
) -> Result<()> {
    let root = h.caller_uid == 0;
    let set_exe = root && !exe_inherited;
    let exe_fd = if set_exe {
        match mm.deleted_exe() {
            // Deleted: the file made again from its saved contents.
            Some(v) => {
                let f = sender.exe_file(r.pid, v)?;
                sender.pass(h, r, &f)?
            }
            None => open_in(h, r, &mm.exe, libc::O_RDONLY | libc::O_CLOEXEC)?,
        }
    } else if root {
        -1
    } else {
        warn!(
            "pid {}: setuid mode cannot set the exe link to {}; /proc/{}/exe still points at criu-helper (restore as root to set it)",
            r.pid, mm.exe, r.pid
        );
        -1
    };
    let auxv: Vec<u8> = mm.auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut b = Batch::new(r);
    let auxv_addr = b.put(256, &auxv)?;
    let map = b.put(0, &encode_mm_map(mm, auxv_addr, exe_fd))?;
    b.call(
        "prctl(PR_SET_MM, PR_SET_MM_MAP)",
        libc::SYS_prctl,
        [
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            map,
            MM_MAP_SIZE as u64,
            0,
            0,
        ],
    );
    let res = b.run(h);
    if set_exe {
        close_in(h, r, exe_fd)?;
    }
    res?;
    if set_exe {
        info!("pid {}: mm fields, auxv and exe ({}) set", r.pid, mm.exe);
    } else if root {
        info!(
            "pid {}: mm fields and auxv set (exe {} inherited from its parent)",
            r.pid, mm.exe
        );
    } else {
        info!("pid {}: mm fields and auxv set (exe link unchanged)", r.pid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::validate::tests::{sample_mm, vma};
    use super::*;

    fn maps(list: &[(u64, u64, &str)]) -> Vec<SmapsVma> {
        list.iter()
            .map(|&(s, e, n)| SmapsVma {
                start: s,
                end: e,
                perms: "r-xp".into(),
                name: n.into(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn mm_map_layout() {
        let mm = sample_mm();
        let b = encode_mm_map(&mm, 0x1234, 5);
        assert_eq!(b.len(), MM_MAP_SIZE);
        assert_eq!(&b[0..8], &0x400000u64.to_le_bytes());
        assert_eq!(&b[80..88], &mm.env_end.to_le_bytes());
        assert_eq!(&b[88..96], &0x1234u64.to_le_bytes());
        assert_eq!(&b[96..100], &32u32.to_le_bytes());
        assert_eq!(&b[100..104], &5u32.to_le_bytes());
    }

    #[test]
    fn trampoline_avoids_both_layouts() {
        let mm = sample_mm();
        let stub = maps(&[(0x7ffffff00000, 0x7ffffffff000, "[stack]")]);
        let mut occ = dumped_ranges(&mm.vmas);
        occ.extend(live_ranges(&stub));
        let (s, e) = plan_trampoline(occ).unwrap();
        assert_eq!(e - s, TRAMPOLINE_PAGES * PAGE);
        assert!(e <= 0x7ffffff00000 && s >= MIN_ADDR);
        for v in &mm.vmas {
            assert!(e <= v.start || s >= v.end || v.kind == VmaKind::Vsyscall);
        }
    }

    #[test]
    fn shared_objects_sized_and_placed() {
        let sh = |s, e, shmid, pgoff| {
            let mut v = vma(
                s,
                e,
                VmaKind::SharedAnon { shmid },
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            );
            v.pgoff = pgoff;
            v
        };
        let mut a = sample_mm();
        a.vmas = vec![sh(0x100000, 0x104000, 7, 0), sh(0x200000, 0x201000, 8, 0)];
        let mut b = sample_mm();
        b.vmas = vec![sh(0x300000, 0x302000, 7, 0x3000)];
        let sizes = shared_sizes([&a, &b]);
        assert_eq!(sizes, vec![(7, 0x5000), (8, 0x1000)]);
        let objs = plan_shared(&sizes, vec![(0x10000, 0x7fff_0000_0000)]).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].size, 0x5000);
        assert_eq!(objs[1].addr, objs[0].addr + 0x5000 + PAGE);
        assert!(objs[1].range().1 <= TASK_SIZE && objs[0].addr >= 0x7fff_0000_0000);
        assert_eq!(plan_shared(&[], vec![]), Some(vec![]));
    }

    #[test]
    fn vdso_layout_compare() {
        let mm = sample_mm();
        let same = maps(&[(0x10000, 0x30000, "[vvar]"), (0x30000, 0x32000, "[vdso]")]);
        check_vdso_layout(&mm.vmas, &same).unwrap();
        let other = maps(&[(0x10000, 0x30000, "[vvar]"), (0x30000, 0x33000, "[vdso]")]);
        let e = check_vdso_layout(&mm.vmas, &other).unwrap_err().to_string();
        assert!(e.contains("different kernel vDSO layout"), "{e}");
        let none = maps(&[(0x30000, 0x32000, "[vdso]")]);
        assert!(check_vdso_layout(&mm.vmas, &none).is_err());
    }

    #[test]
    fn prot_and_flags() {
        let v = vma(
            0x1000,
            0x2000,
            VmaKind::Anon,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_GROWSDOWN,
        );
        let mut ro = v.clone();
        ro.prot = libc::PROT_READ as u32;
        assert_eq!(
            map_prot(&ro, true),
            (libc::PROT_READ | libc::PROT_WRITE) as u32
        );
        assert_eq!(map_prot(&ro, false), libc::PROT_READ as u32);
        let f = map_flags(&v);
        assert_eq!(
            f,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_GROWSDOWN | libc::MAP_FIXED)
                as u32
        );
        let runs = [Fill {
            vaddr: 0x1000,
            len: PAGE,
            file: 0,
            off: 0,
        }];
        assert_eq!(vmas_with_pages(std::slice::from_ref(&v), &runs), vec![true]);
        assert_eq!(vmas_with_pages(&[v], &[]), vec![false]);
    }
}
