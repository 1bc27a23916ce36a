//! Reading every image of a checkpoint and cross-checking them before
//! anything is created: a hand-edited or damaged image gives an error naming
//! the file and what is wrong, never a panic and never a half-restored task.

use crate::error::{Error, Result};
use crate::images::format::FORMAT_VERSION;
use crate::images::types::{
    CoreEntry, Creds, FdEntry, FileEntry, FileKind, FsEntry, Inventory, MmEntry, PagemapEntry,
    PagemapRecord, PstreeEntry, Vma, VmaKind,
};
use crate::images::{read_image, read_single, ImageDir, ImageError, Kind};
use shared_ipc::{MAX_XSTATE, SIGINFO_SIZE, TASK_SIZE};
use std::path::{Path, PathBuf};

/// Page size the images and this tool use.
pub const PAGE: u64 = 4096;

/// Number of resource limits the kernel knows (`RLIM_NLIMITS`).
const RLIM_NLIMITS: u32 = 16;

/// Highest descriptor number accepted in `files-PID.img` (the kernel's
/// default `fs.nr_open`).
pub const MAX_FD: i32 = 1 << 20;

/// `MAP_*` bits an image VMA may carry.
const VMA_FLAGS_OK: u32 = (libc::MAP_SHARED
    | libc::MAP_PRIVATE
    | libc::MAP_ANONYMOUS
    | libc::MAP_GROWSDOWN
    | libc::MAP_NORESERVE) as u32;

/// Everything read from an image directory, checked.
#[derive(Debug, Clone)]
pub struct Images {
    /// The image directory, absolute.
    pub dir: PathBuf,
    /// `inventory.img`.
    pub inventory: Inventory,
    /// This process's record of `pstree.img`.
    pub pstree: PstreeEntry,
    /// `core-PID.img`.
    pub core: CoreEntry,
    /// `core-TID.img` of every other thread, in pstree order.
    pub threads: Vec<CoreEntry>,
    /// `mm-PID.img`.
    pub mm: MmEntry,
    /// `fs-PID.img`.
    pub fs: FsEntry,
    /// `files-PID.img`, in fd order.
    pub files: Vec<FdEntry>,
    /// Absolute paths of the pages files: `pages-PID.img`, then
    /// `pages-PID.1.img` if the pages are striped over two.
    pub pages: Vec<PathBuf>,
    /// Page runs in address order, each naming its file (an index into
    /// `pages`) and offset; in each file their bytes follow each other
    /// from offset 0.
    pub runs: Vec<PagemapEntry>,
}

fn invalid(path: &Path, detail: impl Into<String>) -> Error {
    Error::Image(ImageError::invalid(path, detail))
}

/// A whole checkpoint: the tree and, for every process that is not a
/// zombie, its images.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// `inventory.img`.
    pub inventory: Inventory,
    /// `pstree.img`: root first, parents before their children.
    pub tree: Vec<PstreeEntry>,
    /// The images of each live process, in tree order.
    pub procs: Vec<Images>,
    /// `files.img`: every open file description, indexed by its id.
    pub files: Vec<FileEntry>,
}

impl Checkpoint {
    /// The root process's images.
    pub fn root(&self) -> &Images {
        &self.procs[0]
    }
}

/// Read and check every image in `dir`.
///
/// Errors: an image is missing, corrupt or inconsistent (naming the file), or
/// the checkpoint holds something this restore cannot do.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let abs = std::fs::canonicalize(dir).map_err(|e| Error::file(dir, e))?;
    let d = ImageDir::new(&abs);
    if !d.inventory().exists() {
        let any_image = std::fs::read_dir(&abs)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".img"))
            })
            .unwrap_or(false);
        return Err(Error::Refused(if any_image {
            format!(
                "{}: incomplete checkpoint: inventory.img, written last by criu dump, is missing (the dump did not finish); dump again",
                abs.display()
            )
        } else {
            format!(
                "{}: no checkpoint here (no inventory.img); give -D the directory criu dump wrote",
                abs.display()
            )
        }));
    }
    let inventory: Inventory = read_single(&d.inventory(), Kind::Inventory)?;
    check_inventory(&d.inventory(), &inventory)?;
    let tree: Vec<PstreeEntry> = read_image(&d.pstree(), Kind::Pstree)?;
    check_pstree(&d.pstree(), &tree, inventory.root_pid)?;
    super::tree::check_rebuildable(&tree)?;
    let files: Vec<FileEntry> = read_image(&d.file_table(), Kind::FileTable)?;
    check_file_table(&d.file_table(), &files)?;
    let mut procs = Vec::new();
    for e in tree.iter().filter(|e| e.zombie.is_none()) {
        procs.push(load_process(&d, &abs, &inventory, e, &files)?);
    }
    Ok(Checkpoint {
        inventory,
        tree,
        procs,
        files,
    })
}

/// Read and check the images of one live process.
fn load_process(
    d: &ImageDir,
    abs: &Path,
    inventory: &Inventory,
    pstree: &PstreeEntry,
    table: &[FileEntry],
) -> Result<Images> {
    let pid = pstree.pid;
    let core: CoreEntry = read_single(&d.core(pid), Kind::Core)?;
    check_core(&d.core(pid), &core, pid)?;
    let caller = Caller::current();
    if caller.uid != 0 {
        check_creds_for(&d.core(pid), &core.creds, &caller)?;
    }
    let mut threads = Vec::new();
    for &tid in &pstree.threads[1..] {
        let c: CoreEntry = read_single(&d.core(tid), Kind::Core)?;
        check_core(&d.core(tid), &c, tid)?;
        if caller.uid != 0 {
            check_creds_for(&d.core(tid), &c.creds, &caller)?;
        }
        threads.push(c);
    }
    let mm: MmEntry = read_single(&d.mm(pid), Kind::Mm)?;
    check_mm(&d.mm(pid), &mm)?;
    let fs: FsEntry = read_single(&d.fs(pid), Kind::Fs)?;
    check_fs(&d.fs(pid), &fs)?;
    let files: Vec<FdEntry> = read_image(&d.files(pid), Kind::Files)?;
    check_files(&d.files(pid), &files, table)?;
    let recs: Vec<PagemapRecord> = read_image(&d.pagemap(pid), Kind::Pagemap)?;
    let size_of = |name: &str| -> Result<u64> {
        let p = d.file(name);
        Ok(std::fs::metadata(&p).map_err(|e| Error::file(&p, e))?.len())
    };
    let (runs, nfiles) = check_pagemap(&d.pagemap(pid), &recs, pid, &mm.vmas, &size_of)?;
    let pages = (0..nfiles)
        .map(|k| d.file(&ImageDir::pages_name_k(pid, k)))
        .collect();
    Ok(Images {
        dir: abs.to_path_buf(),
        inventory: inventory.clone(),
        pstree: pstree.clone(),
        core,
        threads,
        mm,
        fs,
        files,
        pages,
        runs,
    })
}

/// Format, architecture and page size must be ours.
pub fn check_inventory(path: &Path, inv: &Inventory) -> Result<()> {
    if inv.format_version != FORMAT_VERSION {
        return Err(invalid(
            path,
            format!(
                "image format version {} (this criu reads {FORMAT_VERSION})",
                inv.format_version
            ),
        ));
    }
    if inv.arch != "x86_64" {
        return Err(invalid(
            path,
            format!("architecture {:?}, not x86_64", inv.arch),
        ));
    }
    if inv.page_size != PAGE {
        return Err(invalid(
            path,
            format!("page size {}, not {PAGE}", inv.page_size),
        ));
    }
    Ok(())
}

/// The tree: the inventory's root first, every other process after its
/// parent, IDs positive and never given twice, each live process's leader
/// first in its threads, zombies without threads or children.
pub fn check_pstree(path: &Path, tree: &[PstreeEntry], root: i32) -> Result<()> {
    let Some(first) = tree.first() else {
        return Err(invalid(path, "no process"));
    };
    if first.pid <= 0 || first.pid != root {
        return Err(invalid(
            path,
            format!(
                "pid {} does not match the inventory's root pid {root}",
                first.pid
            ),
        ));
    }
    if first.zombie.is_some() {
        return Err(invalid(path, "the root process is a zombie"));
    }
    if first.shares_fs || first.shares_files {
        return Err(invalid(
            path,
            "the root process shares its fs information or descriptor table with a parent outside the checkpoint",
        ));
    }
    let mut ids: Vec<i32> = Vec::new();
    for (i, p) in tree.iter().enumerate() {
        if p.pid <= 0 || p.pgid <= 0 || p.sid < 0 {
            return Err(invalid(
                path,
                format!("pid {}: bad pid, pgid {} or sid {}", p.pid, p.pgid, p.sid),
            ));
        }
        if i > 0
            && !tree[..i]
                .iter()
                .any(|q| q.pid == p.ppid && q.zombie.is_none())
        {
            return Err(invalid(
                path,
                format!(
                    "pid {}: its parent {} is not before it in the tree",
                    p.pid, p.ppid
                ),
            ));
        }
        match p.zombie {
            Some(_) if !p.threads.is_empty() => {
                return Err(invalid(path, format!("zombie {} has threads", p.pid)))
            }
            Some(_) => {}
            None if p.threads.first() != Some(&p.pid) => {
                return Err(invalid(
                    path,
                    format!("pid {}: the leader is not its first thread", p.pid),
                ))
            }
            None => {}
        }
        for &t in p.threads.iter().skip(1).chain([&p.pid]) {
            if t <= 0 || ids.contains(&t) {
                return Err(invalid(path, format!("id {t} given twice or not positive")));
            }
            ids.push(t);
        }
    }
    Ok(())
}

/// Registers, signals, timers and limits must be in range.
pub fn check_core(path: &Path, c: &CoreEntry, pid: i32) -> Result<()> {
    if c.tid != pid {
        return Err(invalid(path, format!("tid {} is not pid {pid}", c.tid)));
    }
    if c.xstate.is_empty() || c.xstate.len() > MAX_XSTATE {
        return Err(invalid(
            path,
            format!(
                "XSAVE area of {} bytes (expected 1..={MAX_XSTATE})",
                c.xstate.len()
            ),
        ));
    }
    if c.regs.rip >= TASK_SIZE || c.regs.rsp >= TASK_SIZE {
        return Err(invalid(
            path,
            format!(
                "rip {:#x} or rsp {:#x} outside user space",
                c.regs.rip, c.regs.rsp
            ),
        ));
    }
    for p in &c.pending {
        if p.siginfo.len() != SIGINFO_SIZE {
            return Err(invalid(
                path,
                format!(
                    "pending siginfo of {} bytes, not {SIGINFO_SIZE}",
                    p.siginfo.len()
                ),
            ));
        }
        let signo = i32::from_le_bytes([p.siginfo[0], p.siginfo[1], p.siginfo[2], p.siginfo[3]]);
        if !(1..=64).contains(&signo) {
            return Err(invalid(path, format!("pending signal number {signo}")));
        }
    }
    let mut seen = [false; 65];
    for a in &c.sigactions {
        let s = a.sig as usize;
        if !(1..=64).contains(&s) || s == libc::SIGKILL as usize || s == libc::SIGSTOP as usize {
            return Err(invalid(path, format!("signal action for signal {}", a.sig)));
        }
        if std::mem::replace(&mut seen[s], true) {
            return Err(invalid(path, format!("signal {} has two actions", a.sig)));
        }
    }
    let mut ids: Vec<i32> = c.posix_timers.iter().map(|t| t.id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) || ids.first().is_some_and(|&i| i < 0) {
        return Err(invalid(path, "POSIX timer ids negative or repeated"));
    }
    for t in &c.posix_timers {
        if !(0..=64).contains(&t.signo) || !(0..=4).contains(&t.notify) {
            return Err(invalid(
                path,
                format!(
                    "POSIX timer {}: signal {} notify {}",
                    t.id, t.signo, t.notify
                ),
            ));
        }
    }
    for r in &c.rlimits {
        if r.resource >= RLIM_NLIMITS || r.cur > r.max {
            return Err(invalid(
                path,
                format!(
                    "rlimit {}: soft {} above hard {} or unknown resource",
                    r.resource, r.cur, r.max
                ),
            ));
        }
    }
    if let Some(r) = c.rseq {
        if r.ptr == 0 || r.ptr >= TASK_SIZE || r.len < 32 || r.ptr % 32 != 0 {
            return Err(invalid(
                path,
                format!("rseq area {:#x} len {}", r.ptr, r.len),
            ));
        }
    }
    if !(0..=64).contains(&c.pdeath_sig) {
        return Err(invalid(
            path,
            format!("parent-death signal {}", c.pdeath_sig),
        ));
    }
    if c.comm.len() > 64 {
        return Err(invalid(path, "task name too long"));
    }
    Ok(())
}

/// Who runs this restore: criu's real uid and gid and its supplementary
/// groups. A real uid other than 0 means setuid mode (the helper's
/// `caller_uid` is the same number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Supplementary groups, sorted.
    pub groups: Vec<u32>,
}

impl Caller {
    /// This process's real ids and groups (getuid(2), getgid(2), getgroups(2)).
    pub fn current() -> Caller {
        let mut groups: Vec<u32> = nix::unistd::getgroups()
            .unwrap_or_default()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        Caller {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            groups,
        }
    }
}

/// Setuid mode: the image may only ask for credentials the caller has —
/// every uid (real, effective, saved, fs) the caller's real uid, every gid
/// the caller's real gid, the caller's supplementary groups, no capability
/// in the inheritable, permitted, effective or ambient set, no securebits.
/// The bounding set only limits and is not checked. Checked before anything
/// is created.
///
/// Errors: [`Error::Refused`] naming the file and the first difference.
pub fn check_creds_for(path: &Path, c: &Creds, caller: &Caller) -> Result<()> {
    let refuse = |what: String| {
        Err(Error::Refused(format!(
            "{}: the image asks for {what}; criu-helper in setuid mode only restores your own credentials",
            path.display()
        )))
    };
    const WHICH: [&str; 4] = ["real", "effective", "saved", "filesystem"];
    for (i, &u) in c.uids.iter().enumerate() {
        if u != caller.uid {
            return refuse(format!("uid {u} ({}), you are {}", WHICH[i], caller.uid));
        }
    }
    for (i, &g) in c.gids.iter().enumerate() {
        if g != caller.gid {
            return refuse(format!("gid {g} ({}), yours is {}", WHICH[i], caller.gid));
        }
    }
    let mut groups = c.groups.clone();
    groups.sort_unstable();
    groups.dedup();
    if groups != caller.groups {
        return refuse(format!(
            "supplementary groups {:?}, yours are {:?}",
            c.groups, caller.groups
        ));
    }
    for (name, set) in [
        ("inheritable", c.cap_inh),
        ("permitted", c.cap_prm),
        ("effective", c.cap_eff),
        ("ambient", c.cap_amb),
    ] {
        if set != 0 {
            return refuse(format!("{name} capabilities {set:#x}"));
        }
    }
    if c.securebits != 0 {
        return refuse(format!("securebits {:#x}", c.securebits));
    }
    Ok(())
}

fn special(kind: &VmaKind) -> bool {
    matches!(kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock)
}

/// VMAs sorted, disjoint, aligned, inside user space, with sane bits; the
/// vDSO areas at most once each; auxv in pairs.
pub fn check_mm(path: &Path, mm: &MmEntry) -> Result<()> {
    let mut prev_end = 0u64;
    let mut specials = [0u32; 3];
    for v in &mm.vmas {
        let what = format!("mapping {:#x}-{:#x} ({})", v.start, v.end, v.name);
        if v.kind == VmaKind::Vsyscall {
            continue;
        }
        if v.start % PAGE != 0 || v.end % PAGE != 0 || v.start >= v.end {
            return Err(invalid(
                path,
                format!("{what} is empty or not page aligned"),
            ));
        }
        if v.end > TASK_SIZE || v.start < 0x1000 {
            return Err(invalid(path, format!("{what} is outside user space")));
        }
        if v.start < prev_end {
            return Err(invalid(path, format!("{what} overlaps or is out of order")));
        }
        prev_end = v.end;
        if v.prot & !7 != 0 {
            return Err(invalid(
                path,
                format!("{what} has protection bits {:#x}", v.prot),
            ));
        }
        if v.flags & !VMA_FLAGS_OK != 0 {
            return Err(invalid(
                path,
                format!("{what} has mmap flags {:#x}", v.flags),
            ));
        }
        let shared = v.flags & libc::MAP_SHARED as u32 != 0;
        let private = v.flags & libc::MAP_PRIVATE as u32 != 0;
        if shared == private && !special(&v.kind) {
            return Err(invalid(
                path,
                format!(
                    "{what} must be exactly one of shared or private (flags {:#x})",
                    v.flags
                ),
            ));
        }
        match &v.kind {
            VmaKind::SharedAnon { .. } if !shared => {
                return Err(invalid(
                    path,
                    format!("{what}: shared anonymous but not MAP_SHARED"),
                ))
            }
            VmaKind::SharedAnon { .. }
                if v.pgoff % PAGE != 0 || v.pgoff > TASK_SIZE =>
            {
                return Err(invalid(
                    path,
                    format!(
                        "{what}: offset {:#x} in its shared memory object not page aligned or too large",
                        v.pgoff
                    ),
                ))
            }
            VmaKind::File(f) => {
                if !f.path.starts_with('/') {
                    return Err(invalid(
                        path,
                        format!("{what}: file path {:?} not absolute", f.path),
                    ));
                }
                if v.pgoff % PAGE != 0 {
                    return Err(invalid(
                        path,
                        format!("{what}: file offset {:#x} not page aligned", v.pgoff),
                    ));
                }
            }
            VmaKind::Memfd(m) => {
                m.check().map_err(|d| invalid(path, format!("{what}: {d}")))?;
                if v.pgoff % PAGE != 0 {
                    return Err(invalid(
                        path,
                        format!("{what}: file offset {:#x} not page aligned", v.pgoff),
                    ));
                }
            }
            VmaKind::Ghost(g) => {
                if !g.path.starts_with('/') {
                    return Err(invalid(
                        path,
                        format!("{what}: deleted file path {:?} not absolute", g.path),
                    ));
                }
                if v.pgoff % PAGE != 0 {
                    return Err(invalid(
                        path,
                        format!("{what}: file offset {:#x} not page aligned", v.pgoff),
                    ));
                }
            }
            VmaKind::Vdso => specials[0] += 1,
            VmaKind::Vvar => specials[1] += 1,
            VmaKind::VvarVclock => specials[2] += 1,
            _ => {}
        }
        for &a in &v.madvise {
            if !(0..=100).contains(&a) {
                return Err(invalid(path, format!("{what}: madvise advice {a}")));
            }
        }
    }
    if specials.iter().any(|&n| n > 1) {
        return Err(invalid(
            path,
            "a vDSO area ([vdso], [vvar], [vvar_vclock]) appears twice",
        ));
    }
    if mm.auxv.len() & 1 != 0 || mm.auxv.len() > 128 {
        return Err(invalid(
            path,
            format!(
                "auxiliary vector of {} words (must be pairs, at most 128)",
                mm.auxv.len()
            ),
        ));
    }
    if !mm.exe.starts_with('/') {
        return Err(invalid(
            path,
            format!("executable path {:?} not absolute", mm.exe),
        ));
    }
    let fields = mm.prctl_fields();
    if fields.iter().any(|&f| f >= TASK_SIZE) {
        return Err(invalid(
            path,
            "an mm field (code, data, brk, stack, args, env) is outside user space",
        ));
    }
    Ok(())
}

/// Absolute paths and a umask of permission bits.
pub fn check_fs(path: &Path, fs: &FsEntry) -> Result<()> {
    if !fs.cwd.starts_with('/') || !fs.root.starts_with('/') {
        return Err(invalid(
            path,
            format!("cwd {:?} and root {:?} must be absolute", fs.cwd, fs.root),
        ));
    }
    if fs.umask & !0o777 != 0 {
        return Err(invalid(path, format!("umask {:o}", fs.umask)));
    }
    Ok(())
}

/// The file table: each entry's id is its index; paths absolute.
pub fn check_file_table(path: &Path, table: &[FileEntry]) -> Result<()> {
    for (i, e) in table.iter().enumerate() {
        if e.id as usize != i {
            return Err(invalid(
                path,
                format!("entry {i} has id {}; ids must be 0, 1, 2, ...", e.id),
            ));
        }
        match &e.kind {
            FileKind::Reg { file, .. } if !file.path.starts_with('/') => {
                return Err(invalid(
                    path,
                    format!("file {i}: path {:?} not absolute", file.path),
                ))
            }
            FileKind::Device { path: p, .. } | FileKind::Ghost { path: p, .. }
                if !p.starts_with('/') =>
            {
                return Err(invalid(path, format!("file {i}: path {p:?} not absolute")))
            }
            FileKind::Pipe(x) => x
                .check()
                .map_err(|d| invalid(path, format!("file {i}: {d}")))?,
            FileKind::Memfd(x) => x
                .check()
                .map_err(|d| invalid(path, format!("file {i}: {d}")))?,
            FileKind::Inotify(x) => x
                .check()
                .map_err(|d| invalid(path, format!("file {i}: {d}")))?,
            FileKind::Fanotify(x) => x
                .check()
                .map_err(|d| invalid(path, format!("file {i}: {d}")))?,
            FileKind::Epoll(x) => {
                if let Some(t) = x.targets.iter().find(|t| t.fd < 0 || t.fd >= MAX_FD) {
                    return Err(invalid(
                        path,
                        format!("file {i}: epoll registration of fd {} out of range", t.fd),
                    ));
                }
            }
            FileKind::Unix(u) => {
                if let Some(r) = u
                    .queue
                    .iter()
                    .flat_map(|m| &m.fds)
                    .find(|&&r| r as usize >= table.len())
                {
                    return Err(invalid(
                        path,
                        format!("file {i}: a queued message carries file {r}, which is not in the table"),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Descriptors strictly increasing, in range, each naming an entry of the
/// file table; inherited ones are 0, 1 or 2.
pub fn check_files(path: &Path, files: &[FdEntry], table: &[FileEntry]) -> Result<()> {
    let mut prev = -1;
    for f in files {
        if f.fd <= prev || f.fd >= MAX_FD {
            return Err(invalid(
                path,
                format!("fd {} out of order or out of range", f.fd),
            ));
        }
        prev = f.fd;
        let Some(e) = table.get(f.id as usize) else {
            return Err(invalid(
                path,
                format!(
                    "fd {} refers to file {}, which files.img does not have",
                    f.fd, f.id
                ),
            ));
        };
        if matches!(e.kind, FileKind::Inherited { .. }) && f.fd > 2 {
            return Err(invalid(
                path,
                format!("fd {} is marked inherited; only 0, 1 and 2 can be", f.fd),
            ));
        }
    }
    Ok(())
}

/// Whether pages may be stored for a mapping of this kind and flags.
pub fn fillable(v: &Vma) -> bool {
    match v.kind {
        VmaKind::Anon | VmaKind::SharedAnon { .. } => true,
        VmaKind::File(_) | VmaKind::Memfd(_) | VmaKind::Ghost(_) => {
            v.flags & libc::MAP_SHARED as u32 == 0
        }
        _ => false,
    }
}

/// Most pages files a process may have.
pub const MAX_PAGES_FILES: usize = 2;

/// Head first naming this pid's pages files (`pages-PID.img`, then
/// `pages-PID.1.img`), then runs in address order, each inside fillable
/// mappings, each in a named file at the offset where the file's earlier
/// runs end, adding up to each file's size (`size_of` a file name).
/// Returns the runs and the number of pages files.
pub fn check_pagemap(
    path: &Path,
    recs: &[PagemapRecord],
    pid: i32,
    vmas: &[Vma],
    size_of: &dyn Fn(&str) -> Result<u64>,
) -> Result<(Vec<PagemapEntry>, usize)> {
    let Some(PagemapRecord::Head(head)) = recs.first() else {
        return Err(invalid(path, "the first record is not the head"));
    };
    if head.files.is_empty() || head.files.len() > MAX_PAGES_FILES {
        return Err(invalid(
            path,
            format!(
                "names {} pages files (1 to {MAX_PAGES_FILES} expected)",
                head.files.len()
            ),
        ));
    }
    for (k, f) in head.files.iter().enumerate() {
        if f.name != ImageDir::pages_name_k(pid, k) {
            return Err(invalid(
                path,
                format!(
                    "names pages file {:?}, expected {:?}",
                    f.name,
                    ImageDir::pages_name_k(pid, k)
                ),
            ));
        }
    }
    let mut runs = Vec::with_capacity(recs.len() - 1);
    let mut totals = vec![0u64; head.files.len()];
    let mut prev_end = 0u64;
    for r in &recs[1..] {
        let PagemapRecord::Run(run) = r else {
            return Err(invalid(path, "a second head record"));
        };
        let len = run
            .nr_pages
            .checked_mul(PAGE)
            .filter(|&l| l > 0)
            .ok_or_else(|| {
                invalid(
                    path,
                    format!("run at {:#x} of {} pages", run.vaddr, run.nr_pages),
                )
            })?;
        let end = run.vaddr.checked_add(len).filter(|&e| e <= TASK_SIZE);
        let Some(end) = end.filter(|_| run.vaddr % PAGE == 0) else {
            return Err(invalid(
                path,
                format!(
                    "run at {:#x} of {} pages is unaligned or outside user space",
                    run.vaddr, run.nr_pages
                ),
            ));
        };
        if run.vaddr < prev_end {
            return Err(invalid(
                path,
                format!("run at {:#x} overlaps or is out of order", run.vaddr),
            ));
        }
        let Some(total) = totals.get_mut(run.file as usize) else {
            return Err(invalid(
                path,
                format!(
                    "run at {:#x} is in pages file {}, the head names {}",
                    run.vaddr,
                    run.file,
                    head.files.len()
                ),
            ));
        };
        if run.offset != *total {
            return Err(invalid(
                path,
                format!(
                    "run at {:#x} is at offset {} of {}, where its earlier runs end at {}",
                    run.vaddr, run.offset, head.files[run.file as usize].name, *total
                ),
            ));
        }
        prev_end = end;
        check_run_covered(path, vmas, run.vaddr, end)?;
        *total += len;
        runs.push(*run);
    }
    for (f, &total) in head.files.iter().zip(&totals) {
        let size = size_of(&f.name)?;
        if total != f.bytes || total != size {
            return Err(invalid(
                path,
                format!(
                    "runs add up to {total} bytes, the head says {} and {} holds {size}",
                    f.bytes, f.name
                ),
            ));
        }
    }
    Ok((runs, head.files.len()))
}

/// `[s, e)` must be covered, without gaps, by mappings that can hold pages.
fn check_run_covered(path: &Path, vmas: &[Vma], s: u64, e: u64) -> Result<()> {
    let mut cur = s;
    while cur < e {
        let i = vmas.partition_point(|v| v.end <= cur);
        let Some(v) = vmas.get(i).filter(|v| v.start <= cur) else {
            return Err(invalid(
                path,
                format!("pages at {cur:#x} (run {s:#x}-{e:#x}) are outside every mapping"),
            ));
        };
        if !fillable(v) {
            return Err(invalid(
                path,
                format!(
                    "pages at {cur:#x} fall in mapping {:#x}-{:#x} ({}), which cannot hold stored pages",
                    v.start, v.end, v.name
                ),
            ));
        }
        cur = v.end;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::images::types::*;

    pub fn vma(start: u64, end: u64, kind: VmaKind, flags: i32) -> Vma {
        Vma {
            start,
            end,
            prot: 3,
            flags: flags as u32,
            pgoff: 0,
            kind,
            madvise: vec![],
            locked: false,
            name: String::new(),
        }
    }

    pub fn sample_mm() -> MmEntry {
        let fid = FileId {
            path: "/bin/true".into(),
            size: 10,
            dev: 1,
            ino: 2,
            mtime_ns: 0,
        };
        MmEntry {
            start_code: 0x400000,
            end_code: 0x401000,
            start_data: 0x402000,
            end_data: 0x403000,
            start_brk: 0x500000,
            brk: 0x500000,
            start_stack: 0x7ffd0000,
            arg_start: 0x7ffd0000,
            arg_end: 0x7ffd0010,
            env_start: 0x7ffd0010,
            env_end: 0x7ffd0020,
            auxv: vec![6, 4096, 0, 0],
            exe: "/bin/true".into(),
            vmas: vec![
                vma(0x400000, 0x402000, VmaKind::File(fid), libc::MAP_PRIVATE),
                vma(
                    0x500000,
                    0x510000,
                    VmaKind::Anon,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                ),
                vma(
                    0x600000,
                    0x601000,
                    VmaKind::SharedAnon { shmid: 9 },
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                ),
                vma(0x7ffc0000, 0x7ffe0000, VmaKind::Vvar, libc::MAP_PRIVATE),
                vma(0x7ffe0000, 0x7ffe2000, VmaKind::Vdso, libc::MAP_PRIVATE),
                vma(
                    0xffffffffff600000,
                    0xffffffffff601000,
                    VmaKind::Vsyscall,
                    libc::MAP_PRIVATE,
                ),
            ],
        }
    }

    fn p() -> PathBuf {
        PathBuf::from("/imgs/x.img")
    }

    fn msg(r: Result<impl std::fmt::Debug>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn good_mm_passes() {
        check_mm(&p(), &sample_mm()).unwrap();
    }

    #[test]
    fn bad_mm_rejected() {
        let mut m = sample_mm();
        m.vmas.swap(0, 1);
        assert!(msg(check_mm(&p(), &m)).contains("overlaps or is out of order"));
        let mut m = sample_mm();
        m.vmas[1].end = 0x510001;
        assert!(msg(check_mm(&p(), &m)).contains("not page aligned"));
        let mut m = sample_mm();
        m.vmas[1].end = TASK_SIZE + 0x1000;
        m.vmas.truncate(2);
        assert!(msg(check_mm(&p(), &m)).contains("outside user space"));
        let mut m = sample_mm();
        m.vmas[1].prot = 0x10;
        assert!(msg(check_mm(&p(), &m)).contains("protection"));
        let mut m = sample_mm();
        m.vmas[2].flags = libc::MAP_PRIVATE as u32;
        assert!(msg(check_mm(&p(), &m)).contains("shared anonymous"));
        let mut m = sample_mm();
        m.auxv.push(1);
        assert!(msg(check_mm(&p(), &m)).contains("auxiliary"));
    }

    #[test]
    fn memfd_and_deleted_file_mappings_checked() {
        let memfd = |data_file: &str| {
            VmaKind::Memfd(crate::fdkind::memfd::MemfdMap {
                ino: 7,
                name: "buf".into(),
                state: Some(crate::fdkind::memfd::MemfdState {
                    size: 8192,
                    mode: 0o600,
                    seals: 1,
                    extents: vec![(0, 4096)],
                    data_file: data_file.into(),
                }),
            })
        };
        let ghost = |path: &str| {
            VmaKind::Ghost(crate::images::types::GhostMap {
                path: path.into(),
                data: 0,
                size: 100,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime_ns: 0,
            })
        };
        let mut m = sample_mm();
        m.vmas[1].kind = memfd("memfd-7.img");
        m.vmas[2].kind = ghost("/lib/libx.so");
        m.vmas[2].flags = libc::MAP_PRIVATE as u32;
        check_mm(&p(), &m).unwrap();
        assert!(
            fillable(&m.vmas[2]) && !fillable(&vma(0x1000, 0x2000, memfd("m"), libc::MAP_SHARED))
        );
        let mut bad = m.clone();
        bad.vmas[1].kind = memfd("../../etc/shadow");
        assert!(msg(check_mm(&p(), &bad)).contains("not memfd-7.img"));
        let mut bad = m.clone();
        bad.vmas[2].kind = ghost("lib/libx.so");
        assert!(msg(check_mm(&p(), &bad)).contains("not absolute"));
        let mut bad = m.clone();
        bad.vmas[2].pgoff = 100;
        assert!(msg(check_mm(&p(), &bad)).contains("not page aligned"));
        // A deleted executable is found through its mapping.
        m.exe = "/lib/libx.so (deleted)".into();
        assert_eq!(m.deleted_exe().map(|v| v.start), Some(m.vmas[2].start));
        m.exe = "/lib/other (deleted)".into();
        assert!(m.deleted_exe().is_none());
    }

    fn head(total: u64) -> PagemapRecord {
        PagemapRecord::Head(PagemapHead {
            files: vec![PagesFile {
                name: "pages-7.img".into(),
                bytes: total,
            }],
        })
    }

    /// A run in file 0; the offsets are set by [`chk`].
    fn run(vaddr: u64, nr_pages: u64) -> PagemapRecord {
        PagemapRecord::Run(PagemapEntry {
            vaddr,
            nr_pages,
            file: 0,
            offset: 0,
        })
    }

    /// `check_pagemap` of `recs` (runs in file 0 at offsets following each
    /// other) with every pages file `size` bytes long.
    fn chk(recs: &[PagemapRecord], vmas: &[Vma], size: u64) -> Result<(Vec<PagemapEntry>, usize)> {
        let mut recs = recs.to_vec();
        let mut off = 0u64;
        for r in &mut recs {
            if let PagemapRecord::Run(e) = r {
                e.offset = off;
                off = off.wrapping_add(e.nr_pages.wrapping_mul(PAGE));
            }
        }
        check_pagemap(&p(), &recs, 7, vmas, &|_| Ok(size))
    }

    #[test]
    fn pagemap_checks() {
        let m = sample_mm();
        let ok = vec![head(3 * PAGE), run(0x400000, 1), run(0x500000, 2)];
        assert_eq!(chk(&ok, &m.vmas, 3 * PAGE).unwrap().0.len(), 2);
        // Size mismatch with the pages file.
        assert!(msg(chk(&ok, &m.vmas, 4 * PAGE)).contains("add up"));
        // Pages in the vDSO.
        let bad = vec![head(PAGE), run(0x7ffe0000, 1)];
        assert!(msg(chk(&bad, &m.vmas, PAGE)).contains("cannot hold"));
        // Pages in a hole.
        let bad = vec![head(PAGE), run(0x450000, 1)];
        assert!(msg(chk(&bad, &m.vmas, PAGE)).contains("outside every"));
        // Run sticking out of its mapping into a hole.
        let bad = vec![head(PAGE * 0x11), run(0x500000, 0x11)];
        assert!(msg(chk(&bad, &m.vmas, PAGE * 0x11)).contains("outside every"));
        // Out of order.
        let bad = vec![head(2 * PAGE), run(0x500000, 1), run(0x400000, 1)];
        assert!(msg(chk(&bad, &m.vmas, 2 * PAGE)).contains("out of order"));
        // Wrong pages file, missing head, zero pages, overflow.
        let bad = vec![PagemapRecord::Head(PagemapHead {
            files: vec![PagesFile {
                name: "../../etc/passwd".into(),
                bytes: 0,
            }],
        })];
        assert!(msg(chk(&bad, &m.vmas, 0)).contains("expected"));
        assert!(msg(chk(&[run(0x400000, 1)], &m.vmas, 0)).contains("head"));
        let bad = vec![head(0), run(0x400000, 0)];
        assert!(chk(&bad, &m.vmas, 0).is_err());
        let bad = vec![head(0), run(0x400000, u64::MAX / 2)];
        assert!(chk(&bad, &m.vmas, 0).is_err());
        // Two files: each run at the end of its file's earlier runs.
        let two = |second: u64| {
            vec![
                PagemapRecord::Head(PagemapHead {
                    files: vec![
                        PagesFile {
                            name: "pages-7.img".into(),
                            bytes: PAGE,
                        },
                        PagesFile {
                            name: "pages-7.1.img".into(),
                            bytes: 2 * PAGE,
                        },
                    ],
                }),
                PagemapRecord::Run(PagemapEntry {
                    vaddr: 0x400000,
                    nr_pages: 1,
                    file: 1,
                    offset: 0,
                }),
                PagemapRecord::Run(PagemapEntry {
                    vaddr: 0x500000,
                    nr_pages: 1,
                    file: 0,
                    offset: 0,
                }),
                PagemapRecord::Run(PagemapEntry {
                    vaddr: 0x501000,
                    nr_pages: 1,
                    file: 1,
                    offset: second,
                }),
            ]
        };
        let sizes = |n: &str| Ok(if n == "pages-7.img" { PAGE } else { 2 * PAGE });
        let (runs, n) = check_pagemap(&p(), &two(PAGE), 7, &m.vmas, &sizes).unwrap();
        assert_eq!((runs.len(), n), (3, 2));
        let e = msg(check_pagemap(&p(), &two(0), 7, &m.vmas, &sizes));
        assert!(e.contains("offset 0 of pages-7.1.img"), "{e}");
        let mut bad = two(PAGE);
        if let PagemapRecord::Run(r) = &mut bad[1] {
            r.file = 2;
        }
        assert!(msg(check_pagemap(&p(), &bad, 7, &m.vmas, &sizes)).contains("pages file 2"));
        // A short second file.
        let e = msg(check_pagemap(&p(), &two(PAGE), 7, &m.vmas, &|_| Ok(PAGE)));
        assert!(e.contains("pages-7.1.img holds 4096"), "{e}");
    }

    #[test]
    fn files_checks() {
        let e = |fd, id| FdEntry {
            fd,
            cloexec: false,
            id,
        };
        let table = vec![
            FileEntry {
                id: 0,
                kind: FileKind::Inherited { was: "x".into() },
                owner: None,
                locks: Vec::new(),
            },
            FileEntry {
                id: 1,
                kind: FileKind::Device {
                    path: "/dev/null".into(),
                    flags: 0,
                },
                owner: None,
                locks: Vec::new(),
            },
        ];
        check_file_table(&p(), &table).unwrap();
        check_files(&p(), &[e(0, 0), e(1, 0), e(3, 1), e(4, 1)], &table).unwrap();
        assert!(check_files(&p(), &[e(1, 0), e(0, 0)], &table).is_err());
        assert!(check_files(&p(), &[e(4, 0)], &table).is_err());
        assert!(check_files(&p(), &[e(3, 2)], &table).is_err());
        let mut bad = table.clone();
        bad[1].kind = FileKind::Device {
            path: "dev/null".into(),
            flags: 0,
        };
        assert!(check_file_table(&p(), &bad).is_err());
        bad[1].id = 5;
        assert!(check_file_table(&p(), &bad).is_err());

        // The fd kinds' own checks are applied (a memfd naming another
        // file for its contents, an epoll registration out of range).
        let mut bad = table.clone();
        bad[1].kind = FileKind::Memfd(crate::fdkind::memfd::MemfdEntry {
            ino: 9,
            name: "m".into(),
            flags: 2,
            pos: 0,
            state: Some(crate::fdkind::memfd::MemfdState {
                size: 0,
                mode: 0o600,
                seals: 0,
                extents: Vec::new(),
                data_file: "pages-1.img".into(),
            }),
        });
        let err = check_file_table(&p(), &bad).unwrap_err().to_string();
        assert!(err.contains("file 1: memfd:m names contents file"), "{err}");
        bad[1].kind = FileKind::Epoll(crate::fdkind::epoll::EpollEntry {
            flags: 0,
            targets: vec![crate::fdkind::epoll::EpollTarget {
                fd: -1,
                events: 1,
                data: 0,
                ino: 0,
                dev: 0,
            }],
        });
        assert!(check_file_table(&p(), &bad).is_err());
    }

    #[test]
    fn creds_checks_in_setuid_mode() {
        let me = Caller {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        let own = Creds {
            uids: [65534; 4],
            gids: [65534; 4],
            cap_bnd: !0,
            ..Default::default()
        };
        let path = PathBuf::from("/imgs/core-123.img");
        check_creds_for(&path, &own, &me).unwrap();
        let mut c = own.clone();
        c.uids[1] = 0;
        assert_eq!(
            msg(check_creds_for(&path, &c, &me)),
            "/imgs/core-123.img: the image asks for uid 0 (effective), you are 65534; criu-helper in setuid mode only restores your own credentials"
        );
        let mut c = own.clone();
        c.uids[2] = 0;
        assert!(msg(check_creds_for(&path, &c, &me)).contains("uid 0 (saved)"));
        let mut c = own.clone();
        c.gids[3] = 0;
        assert!(msg(check_creds_for(&path, &c, &me)).contains("gid 0 (filesystem)"));
        let mut c = own.clone();
        c.groups = vec![0];
        assert!(msg(check_creds_for(&path, &c, &me)).contains("supplementary groups [0]"));
        for set in 0..4 {
            let mut c = own.clone();
            *[
                &mut c.cap_inh,
                &mut c.cap_prm,
                &mut c.cap_eff,
                &mut c.cap_amb,
            ][set] = 1 << 13;
            assert!(msg(check_creds_for(&path, &c, &me)).contains("capabilities 0x2000"));
        }
        let mut c = own.clone();
        c.securebits = 1;
        assert!(msg(check_creds_for(&path, &c, &me)).contains("securebits"));
        // Groups compare as sets.
        let me2 = Caller {
            groups: vec![4, 27],
            ..me
        };
        let mut c = own;
        c.groups = vec![27, 4];
        check_creds_for(&path, &c, &me2).unwrap();
    }

    #[test]
    fn pstree_checks() {
        let e = PstreeEntry {
            pid: 7,
            ppid: 1,
            pgid: 7,
            sid: 7,
            threads: vec![7, 9],
            zombie: None,
            shares_fs: false,
            shares_files: false,
        };
        check_pstree(&p(), std::slice::from_ref(&e), 7).unwrap();
        let child = PstreeEntry {
            pid: 8,
            ppid: 7,
            threads: vec![8],
            ..e.clone()
        };
        check_pstree(&p(), &[e.clone(), child.clone()], 7).unwrap();
        let sharing = PstreeEntry {
            shares_fs: true,
            shares_files: true,
            ..child.clone()
        };
        check_pstree(&p(), &[e.clone(), sharing], 7).unwrap();
        let root_sharing = PstreeEntry {
            shares_fs: true,
            ..e.clone()
        };
        assert!(check_pstree(&p(), &[root_sharing], 7).is_err());
        let zombie = PstreeEntry {
            threads: vec![],
            zombie: Some(7 << 8),
            ..child.clone()
        };
        check_pstree(&p(), &[e.clone(), zombie.clone()], 7).unwrap();
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        assert!(msg(check_pstree(&p(), &[child.clone(), e.clone()], 8)).contains("parent"));
        let again = PstreeEntry {
            ppid: 7,
            ..e.clone()
        };
        assert!(msg(check_pstree(&p(), &[e.clone(), again], 7)).contains("twice"));
        assert!(check_pstree(&p(), std::slice::from_ref(&e), 8).is_err());
        let mut t = e.clone();
        t.threads = vec![9, 7];
        assert!(msg(check_pstree(&p(), &[t], 7)).contains("leader"));
        assert!(check_pstree(&p(), &[zombie], 8).is_err());
        assert!(check_pstree(&p(), &[], 7).is_err());
    }
}
