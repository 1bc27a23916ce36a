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
mod layout;
mod mm;
mod task;
mod validate;

use crate::cli::RestoreArgs;
use crate::error::{Error, Result};
use crate::helper::{Helper, HelperError};
use crate::remote::Remote;
use crate::{info, warn};
use shared_ipc::{ErrorKind, ExitStatus, ReleaseMode};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
pub use validate::Images;

/// Run `criu restore`; returns criu's exit code.
///
/// Errors: any failure; nothing half-restored is left behind.
pub fn run(args: &RestoreArgs) -> Result<u8> {
    let img = validate::load(&args.common.images_dir)?;
    let pid = img.pstree.pid;
    info!(
        "restoring pid {pid} ({}) from {} (dumped by criu {} on kernel {})",
        img.core.comm,
        img.dir.display(),
        img.inventory.tool_version,
        img.inventory.kernel
    );
    if img.inventory.options.shell_job && !args.common.shell_job {
        warn!("the dump was made with --shell-job; restoring without it");
    }
    precheck(&img)?;

    let mut h = Helper::spawn()?;
    create_stub(&mut h, &img)?;
    if let Err(e) = restore_stub(&mut h, &img) {
        warn!("restore of pid {pid} failed, killing the stub");
        if let Err(e2) = h.release(pid, ReleaseMode::Kill) {
            warn!("killing stub {pid} also failed: {e2}");
        }
        h.finish();
        return Err(e);
    }
    let how = if img.core.stopped {
        ReleaseMode::Stop
    } else {
        ReleaseMode::Resume
    };
    h.release(pid, how)?;
    info!("pid {pid} restored and released ({how:?})");
    if let Some(f) = &args.pidfile {
        let path = resolve(&args.common.images_dir, f);
        std::fs::write(&path, format!("{pid}\n")).map_err(|e| Error::file(&path, e))?;
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
pub fn precheck(img: &Images) -> Result<()> {
    check_pid_free(img.pstree.pid)?;
    files::check_files_exist(&img.mm, &img.files)?;
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
        format!("pid {pid} is already in use by {}", field("Name:"))
    }
}

/// Ask the helper for the stub, with criu's own 0/1/2 at the inherited
/// descriptors.
fn create_stub(h: &mut Helper, img: &Images) -> Result<()> {
    let pid = img.pstree.pid;
    let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let ours: [BorrowedFd<'_>; 3] = [i.as_fd(), o.as_fd(), e.as_fd()];
    let fds: Vec<(i32, BorrowedFd<'_>)> = img
        .files
        .iter()
        .filter(|f| matches!(f.kind, crate::images::types::FdKind::Inherited { .. }))
        .map(|f| (f.fd, ours[f.fd as usize]))
        .collect();
    match h.create_stub(pid, &fds) {
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

/// Turn the stub into the dumped process, up to its final registers.
fn restore_stub(h: &mut Helper, img: &Images) -> Result<()> {
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
    mm::unmap_stub(h, &r, tramp, &stub_maps)?;
    mm::move_specials(h, &r, &img.mm.vmas, tramp, &stub_maps)?;

    let high = files::high_fd_base(&img.files);
    let pages = img.pages.to_string_lossy().into_owned();
    let pages_fd = mm::open_high(h, &r, &pages, libc::O_RDONLY, high)?;
    let widened = mm::map_vmas(h, &r, &img.mm, &img.runs)?;
    mm::fill_pages(h, &r, pages_fd, &img.runs, &img.pages)?;
    mm::close_in(h, &r, pages_fd)?;
    mm::restore_prots(h, &r, &img.mm.vmas, &widened)?;
    mm::set_mm_fields(h, &r, &img.mm)?;

    files::restore_fds(h, &r, &img.files)?;
    files::restore_fs(h, &r, &img.fs)?;
    task::restore_state(h, &r, &img.core, &img.pstree)?;

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
        assert_eq!(pid_in_use_message(5, s), "pid 5 is already in use by bash");
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
