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

mod files;
mod ghost;
mod layout;
mod mm;
mod task;
mod tree;
mod validate;

use crate::cli::RestoreArgs;
use crate::error::{Error, Result};
use crate::helper::{Helper, HelperError};
use crate::images::types::FileEntry;
use crate::remote::Remote;
use crate::{info, warn};
use shared_ipc::{ErrorKind, ExitStatus, ReleaseMode};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
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
    if let Err(e) = restore_all(&mut h, &ck) {
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

/// Create every task, then turn each stub into its dumped process.
fn restore_all(h: &mut Helper, ck: &Checkpoint) -> Result<()> {
    let (mut sender, theirs) = files::FileSender::new(ck)?;
    create_stub(h, ck, sender.transport, theirs)?;
    let shared = create_shared(h, ck)?;
    tree::create_processes(h, ck)?;
    for (i, p) in ck.procs.iter().enumerate() {
        let reaps = ck
            .tree
            .iter()
            .any(|e| e.ppid == p.pstree.pid && e.zombie.is_some());
        restore_stub(h, p, reaps, &shared, &mut sender)?;
        sender.done_with(i);
    }
    sender.finish_sockets()?;
    sender.finish()?;
    Ok(())
}

/// Create every shared memory object of the checkpoint in the root stub,
/// in a hole of every process's dumped layout and of the stub's own, so
/// that the processes forked from it all inherit them (see
/// [`mm::SharedObject`]).
///
/// Errors: no hole that large, or an injected call failed.
fn create_shared(h: &mut Helper, ck: &Checkpoint) -> Result<Vec<mm::SharedObject>> {
    let sizes = mm::shared_sizes(ck.procs.iter().map(|p| &p.mm));
    if sizes.is_empty() {
        return Ok(Vec::new());
    }
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
    let objs = mm::plan_shared(&sizes, occ).ok_or_else(|| {
        Error::Unsupported(format!(
            "no free area for the {} shared memory objects of the tree",
            sizes.len()
        ))
    })?;
    mm::create_shared(h, &Remote::new(root), &objs)?;
    Ok(objs)
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

/// Refuse when the PID is taken, saying by whom (or by a zombie).
///
/// Errors: [`Error::Refused`].
pub fn check_pid_free(pid: i32) -> Result<()> {
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
    Err(Error::Refused(pid_in_use_message(pid, &text)))
}

/// The refusal for a PID whose `/proc/PID/status` reads `status`.
pub fn pid_in_use_message(pid: i32, status: &str) -> String {
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    if field("State:").starts_with('Z') {
        format!(
            "pid {pid} is held by a zombie (not yet reaped by its parent {}); wait for it to be reaped",
            field("PPid:")
        )
    } else {
        format!(
            "pid {pid} is already in use by {}; restore needs the dumped PIDs free: stop that process (or wait until it exits) and try again",
            field("Name:")
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

/// Turn a stub into the dumped process, up to its final registers; its
/// extra threads are created and restored too. `reaps`: it has zombie
/// children, whose `SIGCHLD` (made at restore) is dropped.
fn restore_stub(
    h: &mut Helper,
    img: &Images,
    reaps: bool,
    shared: &[mm::SharedObject],
    sender: &mut files::FileSender<'_>,
) -> Result<()> {
    let pid = img.pstree.pid;
    h.set_sigmask(pid, !0)?;
    let rs = h.get_rseq(pid)?;
    if rs.rseq_abi_pointer != 0 {
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
    let (r, tramp) = mm::setup_trampoline(h, pid, &img.mm.vmas, &stub_maps)?;
    let shared_ranges: Vec<layout::Range> = shared.iter().map(|o| o.range()).collect();
    mm::unmap_stub(h, &r, tramp, &stub_maps, &shared_ranges)?;
    mm::move_specials(h, &r, &img.mm.vmas, tramp, &stub_maps, &shared_ranges)?;
    if reaps {
        // rt_sigtimedwait({SIGCHLD}, NULL, {0, 0}): EAGAIN when none.
        let set = r.put(h, 0, &(1u64 << (libc::SIGCHLD - 1)).to_le_bytes())?;
        let ts = r.put(h, 16, &[0u8; 16])?;
        r.raw(h, libc::SYS_rt_sigtimedwait, [set, 0, ts, 8, 0, 0])?;
    }
    let high = sender.transport + 1;
    let pages = img.pages.to_string_lossy().into_owned();
    let pages_fd = mm::open_high(h, &r, &pages, libc::O_RDONLY, high)?;
    let widened = mm::map_vmas(h, &r, &img.mm, &img.runs, shared)?;
    mm::unmap_shared(h, &r, shared)?;
    mm::fill_pages(h, &r, pages_fd, &img.runs, &img.pages)?;
    mm::close_in(h, &r, pages_fd)?;
    mm::restore_prots(h, &r, &img.mm.vmas, &widened)?;
    mm::set_mm_fields(h, &r, &img.mm)?;

    // A process made with CLONE_FILES / CLONE_FS has its parent's table and
    // fs information, which the parent (restored before it) already set.
    if img.pstree.shares_files {
        info!("pid {pid}: shares its parent's descriptor table (CLONE_FILES)");
    } else {
        files::restore_fds(h, &r, sender, &img.files)?;
    }
    if img.pstree.shares_fs {
        info!("pid {pid}: shares its parent's cwd, root and umask (CLONE_FS)");
    } else {
        files::restore_fs(h, &r, &img.fs)?;
    }
    // Threads before the credentials change: set_tid needs the privilege.
    for t in &img.threads {
        tree::clone_in(h, &r, tree::THREAD_FLAGS, 0, t.tid)?;
    }
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
        h.set_regs(t.tid, task::final_regs(t.regs), Some(t.xstate.clone()))?;
        h.set_sigmask(t.tid, t.sigmask)?;
    }

    // The last injected call: the helper stops the task at its exit,
    // before it would return into the page that is gone.
    r.call(
        h,
        "munmap(trampoline)",
        libc::SYS_munmap,
        [tramp.0, tramp.1 - tramp.0, 0, 0, 0, 0],
    )?;
    let regs = task::final_regs(img.core.regs);
    if regs.rip != img.core.regs.rip {
        info!(
            "pid {pid}: interrupted system call {} will be restarted",
            img.core.regs.orig_rax
        );
    }
    h.set_regs(pid, regs, Some(img.core.xstate.clone()))?;
    h.set_sigmask(pid, img.core.sigmask)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_messages() {
        let z = "Name:\tsleep\nState:\tZ (zombie)\nTgid:\t5\nPPid:\t77\n";
        assert_eq!(
            pid_in_use_message(5, z),
            "pid 5 is held by a zombie (not yet reaped by its parent 77); wait for it to be reaped"
        );
        let s = "Name:\tbash\nState:\tS (sleeping)\nPPid:\t1\n";
        assert!(pid_in_use_message(5, s).starts_with("pid 5 is already in use by bash; "));
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
