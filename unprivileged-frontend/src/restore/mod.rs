//! `criu restore`: rebuild a dumped process from its images without any
//! restorer code in the task. The helper creates a stopped stub with the
//! dumped PID; everything else is done by system calls injected into the
//! stub through one `syscall` instruction on a trampoline page (see
//! DESIGN.md section 6).
//!
//! Order matters for safety: every image is read and cross-checked and every
//! file to reopen is checked before the stub is created; after that, any
//! failure kills the stub, so nothing half-restored is ever left running.

#![forbid(unsafe_code)]

mod cow;
mod files;
mod ghost;
mod layout;
mod mm;
mod task;
pub mod tree;
mod uffd;
mod validate;

use crate::cli::RestoreArgs;
use crate::error::{Error, Result};
use crate::helper::{Helper, HelperError};
use crate::images::types::FileEntry;
use crate::remote::{Batch, Remote};
use crate::{info, warn};
use shared_ipc::{ErrorKind, ExitStatus, ReleaseMode};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
pub use validate::{Checkpoint, Images};

/// Run `criu restore`; returns criu's exit code.
///
/// Errors: any failure; nothing half-restored is left behind.
pub fn run(args: &RestoreArgs) -> Result<u8> {
    let ck = validate::load(&args.common.images_dir)?;
    let img = ck.root();
    let pid = img.pstree.pid;
    info!(
        "restoring pid {pid} ({}) and {} other processes from {} (dumped by criu {} on kernel {})",
        img.core.comm,
        ck.tree.len() - 1,
        img.dir.display(),
        ck.inventory.tool_version,
        ck.inventory.kernel
    );
    if ck.inventory.options.shell_job && !args.common.shell_job {
        warn!("the dump was made with --shell-job; restoring without it");
    }
    precheck_all(&ck)?;
    crate::fdkind::tty::precheck(&ck.files, args.common.shell_job)?;
    // A network lock the dump left is removed whatever happens from here.
    let lock = NetUnlock(ck.inventory.options.network_lock.clone());
    // Opened (with the user's rights) before anything is created, so an
    // unwritable pidfile fails the restore while nothing runs yet.
    let pidfile = match &args.pidfile {
        Some(f) => {
            let path = resolve(&args.common.images_dir, f);
            let file = std::fs::File::create(&path).map_err(|e| Error::file(&path, e))?;
            Some((file, path))
        }
        None => None,
    };

    let mut h = Helper::spawn()?;
    let inet = crate::fdkind::inet::RestoreOpts {
        tcp_close: args.tcp_close,
    };
    if let Err(e) = restore_all(&mut h, &ck, inet) {
        // The helper kills every stub it still traces when we hang up.
        warn!("restore of pid {pid} failed, killing every created task");
        h.finish();
        return Err(e);
    }
    // Children first, each process's threads before its leader.
    for p in ck.procs.iter().rev() {
        let how = if p.core.stopped {
            ReleaseMode::Stop
        } else {
            ReleaseMode::Resume
        };
        for t in &p.threads {
            h.release(t.tid, how)?;
        }
        h.release(p.pstree.pid, how)?;
        info!("pid {} restored and released ({how:?})", p.pstree.pid);
    }
    lock.unlock()?;
    if let Some((mut file, path)) = pidfile {
        use std::io::Write;
        file.write_all(format!("{pid}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::file(&path, e))?;
    }
    if args.detach {
        h.finish();
        return Ok(0);
    }
    let st = h.wait_exit(pid)?;
    h.finish();
    info!("pid {pid} ended: {st:?}");
    Ok(match st {
        ExitStatus::Code(c) => c as u8,
        ExitStatus::Signal(s) => 128u8.wrapping_add(s as u8),
    })
}

/// Removes the network lock a dump left (see `netlock.rs`) when dropped,
/// or by [`NetUnlock::unlock`] to see the error.
struct NetUnlock(Option<String>);

impl NetUnlock {
    fn unlock(mut self) -> Result<()> {
        match self.0.take() {
            Some(t) => {
                crate::netlock::unlock_table(&t)?;
                info!("network lock {t} removed");
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Drop for NetUnlock {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            if let Err(e) = crate::netlock::unlock_table(&t) {
                crate::error!("{e}");
            }
        }
    }
}

/// Create every task and turn each stub into its dumped process: parents
/// first, each process's memory is restored and then its children are
/// forked from it (inheriting its private pages copy-on-write, see
/// [`cow`]); once every process exists, groups and zombies are made, then
/// each process gets its descriptors, threads and state.
fn restore_all(
    h: &mut Helper,
    ck: &Checkpoint,
    inet: crate::fdkind::inet::RestoreOpts,
) -> Result<()> {
    let (mut sender, theirs) = files::FileSender::new(ck)?;
    sender.inet = inet;
    create_stub(h, ck, sender.transport, theirs)?;
    let root = ck.root().pstree.pid;
    let (shared, tramp) = plan_areas(ck)?;
    mm::create_shared(h, &Remote::new(root), &shared)?;
    let mut remotes = Vec::with_capacity(ck.procs.len());
    for e in ck.tree.iter().filter(|e| e.zombie.is_none()) {
        let img = image_of(ck, e.pid)?;
        tree::start_session(h, ck, e)?;
        let parent = if e.pid == root {
            None
        } else {
            Some(image_of(ck, e.ppid)?)
        };
        let r = restore_memory(h, &mut sender, img, parent, tramp, &shared)?;
        tree::fork_children(h, ck, e, &r)?;
        // The children have mapped their parts; the whole goes.
        mm::unmap_shared(h, &r, &shared)?;
        remotes.push(r);
    }
    tree::finish_tree(h, ck)?;
    for (i, (p, r)) in ck.procs.iter().zip(&remotes).enumerate() {
        let reaps = ck
            .tree
            .iter()
            .any(|e| e.ppid == p.pstree.pid && e.zombie.is_some());
        restore_rest(h, p, r, tramp, reaps, &mut sender)?;
        sender.done_with(i);
    }
    sender.finish_sockets()?;
    sender.finish(&ck.tree[0])
}

/// The images of live process `pid`.
///
/// Errors: it has none (a zombie's children are not restored).
fn image_of(ck: &Checkpoint, pid: i32) -> Result<&Images> {
    ck.procs
        .iter()
        .find(|p| p.pstree.pid == pid)
        .ok_or_else(|| Error::Unsupported(format!("pid {pid}: no images of a live process")))
}

/// Place every shared memory object of the checkpoint and the trampoline
/// that every process uses, in holes of every process's dumped layout and
/// of the root stub's own (see [`mm::SharedObject`]).
///
/// Errors: no hole that large.
fn plan_areas(ck: &Checkpoint) -> Result<(Vec<mm::SharedObject>, layout::Range)> {
    let root = ck.root().pstree.pid;
    let mut occ: Vec<layout::Range> = ck
        .procs
        .iter()
        .flat_map(|p| p.mm.vmas.iter())
        .filter(|v| v.kind != crate::images::types::VmaKind::Vsyscall)
        .map(|v| (v.start, v.end))
        .collect();
    occ.extend(
        crate::proc::read_maps(root)?
            .iter()
            .filter(|m| m.end <= shared_ipc::TASK_SIZE)
            .map(|m| (m.start, m.end)),
    );
    let sizes = mm::shared_sizes(ck.procs.iter().map(|p| &p.mm));
    let objs = mm::plan_shared(&sizes, occ.clone()).ok_or_else(|| {
        Error::Unsupported(format!(
            "no free area for the {} shared memory objects of the tree",
            sizes.len()
        ))
    })?;
    occ.extend(objs.iter().map(|o| o.range()));
    let tramp = mm::plan_trampoline(occ).ok_or_else(|| {
        Error::Unsupported(
            "no free area for the trampoline in the dumped layouts and the stub's".into(),
        )
    })?;
    Ok((objs, tramp))
}

/// [`precheck`] for every process, and every thread ID free.
fn precheck_all(ck: &Checkpoint) -> Result<()> {
    for p in &ck.procs {
        precheck(p, &ck.files)?;
        for t in &p.threads {
            check_pid_free(t.tid)?;
        }
    }
    for e in ck.tree.iter().filter(|e| e.zombie.is_some()) {
        check_pid_free(e.pid)?;
    }
    Ok(())
}

/// A relative `--pidfile` is inside the images directory, like the log.
fn resolve(dir: &Path, f: &Path) -> PathBuf {
    if f.is_absolute() {
        f.to_path_buf()
    } else {
        dir.join(f)
    }
}

/// Everything that can be checked before creating anything: the PID is
/// free, the files to reopen are unchanged, the vDSO layout matches.
///
/// Errors: [`Error::Refused`] saying which and why.
pub fn precheck(img: &Images, table: &[FileEntry]) -> Result<()> {
    check_pid_free(img.pstree.pid)?;
    files::check_files_exist(&img.mm, &img.files, table)?;
    let own = crate::proc::read_maps(std::process::id() as i32)?;
    mm::check_vdso_layout(&img.mm.vmas, &own)?;
    Ok(())
}

/// How long a needed PID may stay held by a task that is exiting (a killed
/// task frees its memory before it becomes a zombie: 0.1-0.3 s per GiB).
const EXITING_WAIT: Duration = Duration::from_secs(5);
/// How long a needed PID may stay held by a zombie before the restore gives
/// up on its parent reaping it (some init processes reap only every second
/// or two: 1.5-1.9 s measured for the PID 1 of a container).
const ZOMBIE_WAIT: Duration = Duration::from_secs(3);
/// Pause between two looks at an exiting task.
const EXITING_POLL: Duration = Duration::from_millis(2);

/// Who holds a PID, from `/proc/PID/stat` (proc(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// No task has it.
    Free,
    /// A task that has begun to exit (`PF_EXITING`, state `X`) but is not
    /// a zombie yet.
    Exiting,
    /// A zombie (state `Z`), until its parent reaps it.
    Zombie,
    /// A live task.
    Live,
}

fn holder(pid: i32) -> Result<Holder> {
    let p = crate::proc::path(pid, "stat");
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ESRCH) =>
        {
            return Ok(Holder::Free)
        }
        Err(e) => return Err(Error::proc(&p, e)),
    };
    let st = crate::proc::parse_stat(&text).map_err(|d| Error::parse(&p, d))?;
    Ok(match st.state {
        'Z' => Holder::Zombie,
        'X' | 'x' => Holder::Exiting,
        _ if st.flags & crate::proc::PF_EXITING != 0 => Holder::Exiting,
        _ => Holder::Live,
    })
}

/// Refuse when the PID is taken, saying by whom (or by a zombie). A task
/// that is exiting (a process a dump just killed is still freeing its
/// memory) is waited for, at most [`EXITING_WAIT`]; a zombie at most
/// [`ZOMBIE_WAIT`] for its parent to reap it.
///
/// Errors: [`Error::Refused`].
pub fn check_pid_free(pid: i32) -> Result<()> {
    let start = Instant::now();
    let mut zombie_since = None;
    loop {
        let exiting = match holder(pid)? {
            Holder::Free if start.elapsed() >= EXITING_POLL => {
                info!(
                    "pid {pid} was held by an exiting task; free after {} ms",
                    start.elapsed().as_millis()
                );
                return Ok(());
            }
            Holder::Free => return Ok(()),
            Holder::Live => false,
            Holder::Exiting => true,
            Holder::Zombie => {
                let since = *zombie_since.get_or_insert_with(Instant::now);
                since.elapsed() < ZOMBIE_WAIT
            }
        };
        if !exiting || start.elapsed() >= EXITING_WAIT {
            break;
        }
        std::thread::sleep(EXITING_POLL);
    }
    let p = PathBuf::from(format!("/proc/{pid}/status"));
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ESRCH) =>
        {
            return Ok(())
        }
        Err(e) => return Err(Error::proc(&p, e)),
    };
    let exiting = matches!(holder(pid)?, Holder::Exiting);
    let st = crate::proc::parse_status(&text).map_err(|d| Error::parse(&p, d))?;
    Err(Error::Refused(pid_in_use_message(pid, &st, exiting)))
}

/// The refusal for a PID whose `/proc/PID/status` reads `st`;
/// `exiting`: its task has begun to exit but is not a zombie yet.
pub fn pid_in_use_message(pid: i32, st: &crate::proc::Status, exiting: bool) -> String {
    if st.state == 'Z' {
        format!(
            "pid {pid} is held by a zombie (not yet reaped by its parent {}); wait for it to be reaped",
            st.ppid
        )
    } else if exiting {
        format!(
            "pid {pid} is held by {}, which has been exiting for over {} s; wait until it is gone and try again",
            st.name,
            EXITING_WAIT.as_secs()
        )
    } else {
        format!(
            "pid {pid} is already in use by {}; restore needs the dumped PIDs free: stop that process (or wait until it exits) and try again",
            st.name
        )
    }
}

/// Ask the helper for the root stub, with `transport` (the tasks' end of
/// the socket that passes descriptors) at `number` and nothing else open
/// (the other processes are forked from it).
fn create_stub(h: &mut Helper, ck: &Checkpoint, number: i32, transport: OwnedFd) -> Result<()> {
    let pid = ck.root().pstree.pid;
    match h.create_stub(pid, &[(number, transport.as_fd())]) {
        Ok(gadget) => {
            info!("stub {pid} created, gadget at {gadget:#x}");
            Ok(())
        }
        Err(HelperError::Failed {
            kind: ErrorKind::Clone,
            errno,
            ..
        }) if errno == libc::EEXIST => {
            check_pid_free(pid)?;
            Err(Error::Refused(format!("pid {pid} is already in use")))
        }
        Err(e) => Err(e.into()),
    }
}

/// Turn a stub's address space into the dumped process's: the root stub
/// (`parent` None) gets the trampoline `tramp` and every mapping; a child,
/// just forked from its restored `parent`, keeps what it inherited where
/// that matches its own images and writes only what differs (see [`cow`]).
/// The shared objects' whole mappings stay until the children are forked.
/// Temporary descriptors go above the transport of `sender`, which makes
/// the memfds and deleted files mapped. Returns the process's trampoline.
fn restore_memory(
    h: &mut Helper,
    sender: &mut files::FileSender<'_>,
    img: &Images,
    parent: Option<&Images>,
    tramp: layout::Range,
    shared: &[mm::SharedObject],
) -> Result<Remote> {
    let pid = img.pstree.pid;
    // A child is forked from its parent after the parent's rseq was
    // unregistered here (fork copies the registration, see rseq(2)), so
    // only the root stub can have one.
    let rs = match parent {
        None => Some(h.get_rseq(pid)?),
        Some(_) => None,
    };
    if let Some(rs) = rs.filter(|rs| rs.rseq_abi_pointer != 0) {
        Remote::new(pid).call(
            h,
            "rseq(unregister)",
            libc::SYS_rseq,
            [
                rs.rseq_abi_pointer,
                rs.rseq_abi_size as u64,
                1,
                rs.signature as u64,
                0,
                0,
            ],
        )?;
    }
    let stub_maps = crate::proc::read_maps(pid)?;
    let (r, plan) = match parent {
        None => (
            mm::setup_trampoline(h, pid, tramp)?,
            cow::plain(cow::MemImages::of(img)),
        ),
        Some(p) => (
            mm::trampoline_remote(pid, tramp),
            cow::plan(cow::MemImages::of(img), cow::MemImages::of(p), &stub_maps)?,
        ),
    };
    let mut keep: Vec<layout::Range> = shared.iter().map(|o| o.range()).collect();
    let shared_ranges = keep.clone();
    keep.extend(
        img.mm
            .vmas
            .iter()
            .zip(&plan.inherited)
            .filter(|x| *x.1)
            .map(|(v, _)| (v.start, v.end)),
    );
    mm::unmap_stub(h, &r, tramp, &stub_maps, &keep)?;
    mm::move_specials(h, &r, &img.mm.vmas, tramp, &stub_maps, &shared_ranges)?;
    mm::drop_pages(h, &r, &plan.drop)?;
    let mut pages_fds = Vec::with_capacity(img.pages.len());
    for p in &img.pages {
        let p = p.to_string_lossy().into_owned();
        pages_fds.push(mm::open_high(
            h,
            &r,
            &p,
            libc::O_RDONLY,
            sender.transport + 1,
        )?);
    }
    let widened = mm::map_vmas(h, &r, &img.mm, &plan.fills, shared, &plan.inherited, sender)?;
    let rest = uffd::copy_pages(
        h,
        &r,
        &img.mm.vmas,
        &plan.inherited,
        &plan.fills,
        &img.pages,
    )?;
    mm::fill_pages(h, &r, &pages_fds, &rest, &img.pages)?;
    for fd in pages_fds {
        mm::close_in(h, &r, fd)?;
    }
    mm::restore_prots(h, &r, &img.mm.vmas, &widened)?;
    let exe_inherited = parent.is_some_and(|p| p.mm.exe == img.mm.exe);
    mm::set_mm_fields(h, &r, &img.mm, exe_inherited, sender)?;
    if let Some(p) = parent {
        let kept = plan.inherited.iter().filter(|&&k| k).count();
        info!(
            "pid {pid}: {kept} mappings inherited from {}, {} bytes of them left shared, {} bytes dropped",
            p.pstree.pid,
            plan.same,
            plan.drop.iter().map(|(s, e)| e - s).sum::<u64>()
        );
    }
    Ok(r)
}

/// The rest of a process once every process exists, up to its final
/// registers: descriptors, fs information, threads and their state, then
/// the trampoline goes. `reaps`: it has zombie children, whose `SIGCHLD`
/// (made at restore) is dropped.
fn restore_rest(
    h: &mut Helper,
    img: &Images,
    r: &Remote,
    tramp: layout::Range,
    reaps: bool,
    sender: &mut files::FileSender<'_>,
) -> Result<()> {
    let pid = img.pstree.pid;
    let r = *r;
    if reaps {
        // rt_sigtimedwait({SIGCHLD}, NULL, {0, 0}): EAGAIN when none.
        let set = r.put(h, 0, &(1u64 << (libc::SIGCHLD - 1)).to_le_bytes())?;
        let ts = r.put(h, 16, &[0u8; 16])?;
        r.raw(h, libc::SYS_rt_sigtimedwait, [set, 0, ts, 8, 0, 0])?;
    }
    // A process made with CLONE_FILES / CLONE_FS has its parent's table and
    // fs information, which the parent (restored before it) already set.
    if img.pstree.shares_files {
        info!("pid {pid}: shares its parent's descriptor table (CLONE_FILES)");
    } else {
        sender.dev_tty_in_task =
            crate::fdkind::tty::session_has_tree_ctty(sender.table(), img.pstree.sid);
        files::restore_fds(h, &r, sender, &img.files)?;
    }
    crate::fdkind::tty::restore_ctty(h, &r, sender.table(), &img.files, &img.pstree)?;
    if !img.pstree.shares_files
        && crate::fdkind::tty::session_has_tree_ctty(sender.table(), img.pstree.sid)
    {
        files::reopen_dev_tty(h, &r, sender.table(), &img.files)?;
    }
    if img.pstree.shares_fs {
        info!("pid {pid}: shares its parent's cwd, root and umask (CLONE_FS)");
    } else {
        files::restore_fs(h, &r, &img.fs)?;
    }
    // Threads before the credentials change: set_tid needs the privilege.
    let threads: Vec<_> = img
        .threads
        .iter()
        .map(|t| (tree::THREAD_FLAGS, 0, t.tid))
        .collect();
    tree::clone_all(h, &r, &threads)?;
    task::restore_state(h, &r, &img.core)?;
    if img.core.child_subreaper {
        r.call(
            h,
            "prctl(PR_SET_CHILD_SUBREAPER)",
            libc::SYS_prctl,
            [libc::PR_SET_CHILD_SUBREAPER as u64, 1, 0, 0, 0, 0],
        )?;
    }
    for t in &img.threads {
        let tr = Remote { pid: t.tid, ..r };
        task::restore_thread_state(h, &tr, t, pid)?;
        let mut b = Batch::new(&tr);
        b.set_regs(task::final_regs(t.regs), Some(t.xstate.clone()));
        b.set_sigmask(t.sigmask);
        b.run(h)?;
    }

    // The last injected call: the helper stops the task at its exit,
    // before it would return into the page that is gone. Then the final
    // registers and mask, in the same request.
    let mut b = Batch::new(&r);
    b.call(
        "munmap(trampoline)",
        libc::SYS_munmap,
        [tramp.0, tramp.1 - tramp.0, 0, 0, 0, 0],
    );
    let regs = task::final_regs(img.core.regs);
    if regs.rip != img.core.regs.rip {
        info!(
            "pid {pid}: interrupted system call {} will be restarted",
            img.core.regs.orig_rax
        );
    }
    b.set_regs(regs, Some(img.core.xstate.clone()));
    b.set_sigmask(img.core.sigmask);
    b.run(h)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_messages() {
        let st = |t: &str| crate::proc::parse_status(t).unwrap();
        let z = "Name:\tsleep\nState:\tZ (zombie)\nTgid:\t5\nPPid:\t77\n";
        assert_eq!(
            pid_in_use_message(5, &st(z), false),
            "pid 5 is held by a zombie (not yet reaped by its parent 77); wait for it to be reaped"
        );
        let s = "Name:\tbash\nState:\tS (sleeping)\nPPid:\t1\n";
        assert!(
            pid_in_use_message(5, &st(s), false).starts_with("pid 5 is already in use by bash; ")
        );
        let x = "Name:\thog\nState:\tD (disk sleep)\nPPid:\t1\n";
        assert!(pid_in_use_message(5, &st(x), true)
            .starts_with("pid 5 is held by hog, which has been exiting for over 5 s; "));
    }

    #[test]
    fn own_pid_is_in_use() {
        let e = check_pid_free(std::process::id() as i32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already in use"), "{e}");
    }

    #[test]
    fn pidfile_path() {
        assert_eq!(
            resolve(Path::new("/d"), Path::new("p")),
            PathBuf::from("/d/p")
        );
        assert_eq!(
            resolve(Path::new("/d"), Path::new("/p")),
            PathBuf::from("/p")
        );
    }

    #[test]
    fn damaged_image_gives_error_naming_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("inventory.img"), b"garbage").unwrap();
        let e = validate::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("inventory.img"), "{e}");
        let e = validate::load(&d.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
