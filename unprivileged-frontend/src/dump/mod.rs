//! `criu dump`: freeze a process, write its state to image files, then kill
//! it (default), leave it running (`-R`) or leave it stopped (`-s`).
//!
//! Order matters for safety: everything is collected and every image is
//! written and fsynced before the task is killed; on any error the task is
//! released with its registers and signal mask as they were, and keeps
//! running.

mod files;
mod mm;
mod task;

use crate::cli::DumpArgs;
use crate::error::{Error, Result};
use crate::helper::Helper;
use crate::images::types::{DumpOptions, Inventory, PstreeEntry};
use crate::images::{write_image, ImageDir, Kind};
use crate::remote::{find_gadget, Remote};
use crate::{debug, info};
use shared_ipc::ReleaseMode;
use std::path::Path;

/// Size of the scratch area mapped in the task during the dump, in bytes.
const SCRATCH_LEN: u64 = 16 * 4096;

/// Run `criu dump`.
///
/// Errors: any failure; the task is then left running as it was.
pub fn run(args: &DumpArgs) -> Result<()> {
    let pid = args.pid;
    let dir = ImageDir::new(&args.common.images_dir);
    check_images_dir(dir.path())?;
    precheck(pid)?;

    let mut h = Helper::spawn()?;
    info!("seizing pid {pid}");
    h.seize(pid)?;
    let result = dump_seized(&mut h, pid, args, &dir);
    match result {
        Ok(()) => {
            let how = if args.leave_running {
                ReleaseMode::Resume
            } else if args.leave_stopped {
                ReleaseMode::Stop
            } else {
                ReleaseMode::Kill
            };
            info!("images complete and synced; releasing pid {pid} ({how:?})");
            h.release(pid, how)?;
            h.finish();
            info!("dump finished");
            Ok(())
        }
        Err(e) => {
            info!("dump failed, letting pid {pid} run on: {e}");
            match h.release(pid, ReleaseMode::Resume) {
                // After a Denied the helper already let the task go.
                Err(crate::helper::HelperError::Failed {
                    kind: shared_ipc::ErrorKind::NotTraced | shared_ipc::ErrorKind::Gone,
                    ..
                }) if matches!(e, Error::Helper(crate::helper::HelperError::Denied { .. })) => {
                    debug!("pid {pid} was already let go by the helper")
                }
                Err(e2) => crate::error!("releasing pid {pid} after the failure also failed: {e2}"),
                Ok(()) => {}
            }
            h.finish();
            Err(e)
        }
    }
}

fn check_images_dir(dir: &Path) -> Result<()> {
    let md = std::fs::metadata(dir).map_err(|e| Error::file(dir, e))?;
    if !md.is_dir() {
        return Err(Error::file(
            dir,
            std::io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    // Prove we can write there before touching the task.
    let probe = dir.join(".criu-write-test");
    std::fs::write(&probe, b"").map_err(|e| Error::file(dir, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn precheck(pid: i32) -> Result<()> {
    if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(Error::Refused(format!("pid {pid} does not exist")));
    }
    if pid as u32 == std::process::id() {
        return Err(Error::Refused(format!("pid {pid} is criu itself")));
    }
    let st = crate::proc::read_status(pid)?;
    if st.kthread {
        return Err(Error::Refused(format!(
            "pid {pid} is a kernel thread; only user processes can be dumped"
        )));
    }
    if st.tracer_pid != 0 {
        return Err(Error::Refused(format!(
            "pid {pid} is being traced by pid {} (another debugger, or a criu that is still finishing)",
            st.tracer_pid
        )));
    }
    if st.threads > 1 {
        return Err(Error::Unsupported(format!(
            "pid {pid} has {} threads; multi-threaded processes are not supported yet",
            st.threads
        )));
    }
    match st.state {
        'Z' | 'X' => {
            return Err(Error::Refused(format!(
                "pid {pid} is a zombie; there is nothing to dump"
            )))
        }
        'T' | 't' => {
            return Err(Error::Unsupported(format!(
                "pid {pid} is stopped (state {}); dumping stopped processes is not supported yet",
                st.state
            )))
        }
        _ => {}
    }
    if st.seccomp != 0 {
        return Err(Error::Unsupported(format!(
            "pid {pid} runs under a seccomp filter; dumping those is not supported yet"
        )));
    }
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    if !children.trim().is_empty() {
        return Err(Error::Unsupported(format!(
            "pid {pid} has child processes ({}); process trees are not supported yet",
            children.trim()
        )));
    }
    Ok(())
}

fn dump_seized(h: &mut Helper, pid: i32, args: &DumpArgs, dir: &ImageDir) -> Result<()> {
    let stat = crate::proc::read_stat(pid)?;
    let status = crate::proc::read_status(pid)?;
    if status.threads > 1 {
        return Err(Error::Unsupported(format!(
            "pid {pid} started a thread while being frozen; multi-threaded processes are not supported yet"
        )));
    }
    // The memory map is read before our scratch area exists in the task.
    let vmas = crate::proc::read_smaps(pid)?;
    let (regs, xstate) = h.get_regs(pid)?;
    // The helper blocks every signal during each injected call and puts the
    // task's registers and mask back after it, so no handler of the task
    // runs in between and the task can always run on if we die.
    let sigmask = h.get_sigmask(pid)?;

    let gadget = find_gadget(h, pid, &vmas)?;
    debug!("pid {pid}: syscall gadget at {gadget:#x}");
    h.set_gadget(pid, gadget)?;
    let mut remote = Remote::new(pid);
    let scratch = remote.call(
        h,
        "mmap(scratch)",
        libc::SYS_mmap,
        [
            0,
            SCRATCH_LEN,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    )?;
    remote.scratch = scratch;
    remote.scratch_len = SCRATCH_LEN;

    let collected = collect_and_write(
        h, &remote, &stat, &status, &vmas, regs, xstate, sigmask, args, dir,
    );
    // The scratch area goes away whatever happened.
    let unmapped = remote.call(
        h,
        "munmap(scratch)",
        libc::SYS_munmap,
        [scratch, SCRATCH_LEN, 0, 0, 0, 0],
    );
    collected?;
    unmapped?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn collect_and_write(
    h: &mut Helper,
    remote: &Remote,
    stat: &crate::proc::Stat,
    status: &crate::proc::Status,
    vmas: &[crate::proc::SmapsVma],
    regs: shared_ipc::UserRegs,
    xstate: Vec<u8>,
    sigmask: u64,
    args: &DumpArgs,
    dir: &ImageDir,
) -> Result<()> {
    let pid = remote.pid;
    info!("collecting task state of pid {pid}");
    let core = task::collect(h, remote, status, regs, xstate, sigmask)?;
    info!("collecting memory of pid {pid}");
    let brk = remote.call(h, "brk(0)", libc::SYS_brk, [0; 6])?;
    let mm = mm::collect(pid, stat, brk, vmas)?;
    info!("collecting descriptors of pid {pid}");
    let fds = files::collect(pid, args.common.shell_job)?;
    let fs = files::collect_fs(pid, status)?;

    info!("writing images to {}", dir.path().display());
    write_image(&dir.core(pid), Kind::Core, &[&core])?;
    write_image(&dir.fs(pid), Kind::Fs, &[&fs])?;
    write_image(&dir.files(pid), Kind::Files, &fds)?;
    let bytes = mm::write_pages(h, pid, &mm, dir)?;
    info!("pid {pid}: {bytes} bytes of memory written");
    write_image(&dir.mm(pid), Kind::Mm, &[&mm])?;
    let pstree = PstreeEntry {
        pid,
        ppid: stat.ppid,
        pgid: stat.pgrp,
        sid: stat.session,
        threads: vec![pid],
    };
    write_image(&dir.pstree(), Kind::Pstree, &[&pstree])?;
    // The inventory is written last: a directory without it is incomplete.
    let inv = Inventory {
        format_version: crate::images::format::FORMAT_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: crate::proc::kernel_release(),
        arch: "x86_64".into(),
        root_pid: pid,
        page_size: 4096,
        dumped_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        options: DumpOptions {
            shell_job: args.common.shell_job,
            leave_running: args.leave_running,
            leave_stopped: args.leave_stopped,
        },
    };
    write_image(&dir.inventory(), Kind::Inventory, &[&inv])?;
    let d = std::fs::File::open(dir.path()).map_err(|e| Error::file(dir.path(), e))?;
    d.sync_all().map_err(|e| Error::file(dir.path(), e))?;
    Ok(())
}
