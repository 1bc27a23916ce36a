//! `criu dump`: freeze a process, write its state to image files, then kill
//! it (default), leave it running (`-R`) or leave it stopped (`-s`).
//!
//! Order matters for safety: everything is collected and every image is
//! written and fsynced before the task is killed; on any error the task is
//! released with its registers and signal mask as they were, and keeps
//! running.

pub mod files;
mod mm;
mod share;
mod splice;
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
/// Errors: any failure; every task is then left running as it was.
pub fn run(args: &DumpArgs) -> Result<()> {
    let pid = args.pid;
    let dir = ImageDir::new(&args.common.images_dir);
    check_images_dir(dir.path())?;
    precheck(pid)?;

    let mut h = Helper::spawn()?;
    info!("seizing the tree of pid {pid}");
    let mut tree = Tree::default();
    let result =
        seize_tree(&mut h, pid, &mut tree).and_then(|()| dump_tree(&mut h, &tree, args, &dir));
    match result {
        Ok(hold) => {
            let how = if args.leave_running {
                ReleaseMode::Resume
            } else if args.leave_stopped {
                ReleaseMode::Stop
            } else {
                ReleaseMode::Kill
            };
            // Connections leave repair mode before their tasks run again;
            // killed tasks' sockets close in it, silently, and stay locked.
            let hold = if matches!(how, ReleaseMode::Kill) {
                Some(hold)
            } else {
                drop(hold);
                None
            };
            info!("images complete and synced; releasing the tree of pid {pid} ({how:?})");
            let mut first = Ok(());
            for tid in tree.release_order() {
                if let Err(e) = h.release(tid, how) {
                    crate::error!("releasing {tid} failed: {e}");
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
            h.finish();
            if let Some(hold) = hold {
                hold.keep();
            }
            first?;
            info!("dump finished");
            Ok(())
        }
        Err(e) => {
            info!("dump failed, letting the tree of pid {pid} run on: {e}");
            for tid in tree.release_order() {
                match h.release(tid, ReleaseMode::Resume) {
                    // After a Denied the helper already let the task go.
                    Err(crate::helper::HelperError::Failed {
                        kind: shared_ipc::ErrorKind::NotTraced | shared_ipc::ErrorKind::Gone,
                        ..
                    }) if matches!(e, Error::Helper(crate::helper::HelperError::Denied { .. })) => {
                        debug!("{tid} was already let go by the helper")
                    }
                    Err(e2) => {
                        crate::error!("releasing {tid} after the failure also failed: {e2}")
                    }
                    Ok(()) => {}
                }
            }
            h.finish();
            Err(e)
        }
    }
}

/// One process of the dumped tree.
#[derive(Debug, Default)]
struct Proc {
    pid: i32,
    /// Seized threads, the leader first (empty for a zombie).
    threads: Vec<i32>,
    /// Raw wait status of a zombie.
    zombie: Option<i32>,
    /// Stopped (state `T`) before it was seized.
    stopped: bool,
}

/// The seized tree, root first, parents before their children.
#[derive(Debug, Default)]
struct Tree {
    procs: Vec<Proc>,
}

impl Tree {
    fn has(&self, pid: i32) -> bool {
        self.procs.iter().any(|p| p.pid == pid)
    }

    /// Every seized task, threads before their leader, children before
    /// parents (a leader's end is reported only after its threads').
    fn release_order(&self) -> Vec<i32> {
        let mut v = Vec::new();
        for p in self.procs.iter().rev() {
            v.extend(p.threads.iter().skip(1).copied());
            v.extend(p.threads.first().copied());
        }
        v
    }
}

/// The numeric entries of a /proc directory listing.
fn list_ids(path: &str) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(path)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// The raw wait status of a zombie: field 52 (`exit_code`) of
/// /proc/PID/stat (proc(5)).
fn zombie_status(pid: i32) -> Result<i32> {
    let p = crate::proc::path(pid, "stat");
    let text = crate::proc::read_text(&p)?;
    let after = text.rsplit_once(')').map(|x| x.1).unwrap_or("");
    after
        .split_whitespace()
        .nth(49)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::parse(&p, "no exit_code field"))
}

/// A process whose leader has exited while other threads still run (its
/// leader shows as a zombie but /proc/PID/task lists live threads): it is
/// half gone, and a leader cannot be recreated as a zombie with live threads.
fn check_half_exited(pid: i32, st: &crate::proc::Status) -> Result<()> {
    if !matches!(st.state, 'Z' | 'X') {
        return Ok(());
    }
    let others: Vec<i32> = list_ids(&format!("/proc/{pid}/task"))
        .into_iter()
        .filter(|&t| t != pid)
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "pid {pid} is exiting: its main thread has exited while threads {others:?} still run; such a process cannot be dumped (nothing was changed)"
    )))
}

/// Whether a task whose `/proc/PID/task/TID/wchan` reads `wchan` and whose
/// state is `state` waits in vfork(2) (or a `CLONE_VFORK` clone) for its
/// child: the wait is `wait_for_vfork_done`, which the kernel may inline
/// into `kernel_clone`, where it is the only uninterruptible (`D`) sleep. A
/// `PTRACE_INTERRUPT` does not stop such a task until the child execs or
/// exits (see ptrace(2), clone(2) `CLONE_VFORK`).
fn in_vfork(wchan: &str, state: char) -> bool {
    let wchan = wchan.trim();
    wchan.contains("vfork") || (wchan == "kernel_clone" && state == 'D')
}

/// Refusals for one thread before it is seized: traced by someone else, or
/// waiting in vfork(2) for a child that has not exec'd or exited yet (it
/// could not be stopped until then).
fn precheck_thread(pid: i32, tid: i32) -> Result<()> {
    let p = std::path::PathBuf::from(format!("/proc/{pid}/task/{tid}/status"));
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(()); // gone: the caller notices
    };
    let st = crate::proc::parse_status(&text).map_err(|d| Error::parse(&p, d))?;
    if st.tracer_pid != 0 {
        return Err(Error::Refused(format!(
            "pid {pid} thread {tid} is being traced by pid {} (another debugger?); nothing was changed",
            st.tracer_pid
        )));
    }
    let wchan =
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan")).unwrap_or_default();
    if in_vfork(&wchan, st.state) {
        return Err(Error::Refused(format!(
            "pid {pid} thread {tid} is inside vfork(), waiting for its child to exec or exit; it cannot be stopped until then (nothing was changed)"
        )));
    }
    Ok(())
}

/// Refusals for a process found in the tree, before it is seized.
fn precheck_member(pid: i32, st: &crate::proc::Status) -> Result<()> {
    check_half_exited(pid, st)?;
    if st.tracer_pid != 0 {
        return Err(Error::Refused(format!(
            "pid {pid} (in the tree) is being traced by pid {} (another debugger?); nothing was changed",
            st.tracer_pid
        )));
    }
    if st.seccomp != 0 {
        return Err(Error::Unsupported(format!(
            "pid {pid} (in the tree) runs under a seccomp filter; dumping those is not supported yet"
        )));
    }
    Ok(())
}

/// Seize every thread of every process below and including `root`: walk
/// /proc/PID/task and each thread's children, seize what is new, and walk
/// again until nothing new appears (a seized task cannot clone or fork, so
/// the set is then final). Zombies are recorded, not seized.
fn seize_tree(h: &mut Helper, root: i32, tree: &mut Tree) -> Result<()> {
    tree.procs.push(Proc {
        pid: root,
        ..Proc::default()
    });
    for round in 0.. {
        if round > 1000 {
            return Err(Error::Refused(format!(
                "the tree of pid {root} keeps changing; giving up"
            )));
        }
        let mut new = false;
        let mut i = 0;
        while i < tree.procs.len() {
            let pid = tree.procs[i].pid;
            if tree.procs[i].zombie.is_some() {
                i += 1;
                continue;
            }
            if tree.procs[i].threads.is_empty() {
                let st = crate::proc::read_status(pid)?;
                if i > 0 {
                    precheck_member(pid, &st)?;
                }
                if matches!(st.state, 'Z' | 'X') {
                    tree.procs[i].zombie = Some(zombie_status(pid)?);
                    debug!("pid {pid} is a zombie");
                    new = true;
                    i += 1;
                    continue;
                }
                tree.procs[i].stopped = st.state == 'T';
            }
            for tid in list_ids(&format!("/proc/{pid}/task")) {
                if tree.procs[i].threads.contains(&tid) {
                    continue;
                }
                precheck_thread(pid, tid)?;
                match h.seize(tid) {
                    Ok(()) => {}
                    Err(_) if !Path::new(&format!("/proc/{pid}/task/{tid}")).exists() => continue,
                    Err(e) => return Err(e.into()),
                }
                debug!("seized {tid} of pid {pid}");
                // The leader first.
                if tid == pid {
                    tree.procs[i].threads.insert(0, tid);
                } else {
                    tree.procs[i].threads.push(tid);
                }
                new = true;
            }
            let threads = tree.procs[i].threads.clone();
            for tid in threads {
                let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
                    .unwrap_or_default();
                for child in kids.split_whitespace().filter_map(|c| c.parse().ok()) {
                    if !tree.has(child) {
                        tree.procs.push(Proc {
                            pid: child,
                            ..Proc::default()
                        });
                        new = true;
                    }
                }
            }
            if tree.procs[i].threads.first() != Some(&pid) {
                return Err(Error::Refused(format!(
                    "pid {pid}: its thread group leader could not be seized (did it exit?)"
                )));
            }
            i += 1;
        }
        if !new {
            break;
        }
    }
    info!(
        "seized {} processes, {} threads",
        tree.procs.len(),
        tree.procs.iter().map(|p| p.threads.len()).sum::<usize>()
    );
    Ok(())
}

/// `--ext-unix-sk` and the `unix[INO]` entries of `--external`.
///
/// Errors: [`Error::Refused`] for an `--external` value this criu does not
/// know.
fn ext_unix(args: &DumpArgs) -> Result<crate::fdkind::unix::ExtUnix> {
    let mut ext = crate::fdkind::unix::ExtUnix {
        all: args.ext_unix_sk,
        inos: Vec::new(),
    };
    for x in &args.external {
        let ino = x
            .strip_prefix("unix[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                Error::Refused(format!(
                    "--external {x}: not understood; this criu knows unix[INO] (INO: a socket inode, as in socket:[INO])"
                ))
            })?;
        ext.inos.push(ino);
    }
    Ok(ext)
}

/// Write the images of every process, then `pstree.img` and, last, the
/// inventory.
/// Dump every process of `tree`; returns what the sockets' dump holds
/// until the tasks are released (dropped on error: nothing stays locked or
/// in repair mode).
fn dump_tree(
    h: &mut Helper,
    tree: &Tree,
    args: &DumpArgs,
    dir: &ImageDir,
) -> Result<files::InetHold> {
    let live: Vec<&Proc> = tree.procs.iter().filter(|p| p.zombie.is_none()).collect();
    let mut pairs = Vec::new();
    for p in &live {
        pairs.push((p.pid, crate::proc::read_stat(p.pid)?.ppid));
    }
    let fs = share::shared_with_parent(&pairs, crate::sys::KcmpResource::Fs)?;
    let files = share::shared_with_parent(&pairs, crate::sys::KcmpResource::Files)?;
    let shares = |pid: i32, v: &[bool]| {
        live.iter()
            .position(|p| p.pid == pid)
            .is_some_and(|i| v[i] && i > 0)
    };
    let mut entries = Vec::new();
    let mut shared = mm::SharedStored::default();
    let mut table = files::FileTable::new(
        files::FileOptions {
            shell_job: args.common.shell_job,
            file_locks: args.file_locks,
            ghost_limit: args.ghost_limit,
        },
        dir,
    );
    table.inet = crate::fdkind::inet::DumpOpts {
        tcp_established: args.tcp_established,
        tcp_close: args.tcp_close,
    };
    table
        .hold
        .configure(args.network_lock, format!("criu-lock-{}", args.pid));
    for p in &tree.procs {
        let stat = crate::proc::read_stat(p.pid)?;
        if p.zombie.is_none() {
            dump_seized(h, p, &stat, dir, &mut shared, &mut table)?;
        }
        entries.push(PstreeEntry {
            pid: p.pid,
            ppid: stat.ppid,
            pgid: stat.pgrp,
            sid: stat.session,
            threads: p.threads.clone(),
            zombie: p.zombie,
            shares_fs: shares(p.pid, &fs),
            shares_files: shares(p.pid, &files),
        });
        if entries
            .last()
            .is_some_and(|e| e.shares_fs || e.shares_files)
        {
            debug!(
                "pid {}: shares with its parent: fs {}, files {}",
                p.pid,
                shares(p.pid, &fs),
                shares(p.pid, &files)
            );
        }
    }
    table.check_unix(&ext_unix(args)?)?;
    // A tree restore could not rebuild is refused now, while every task
    // still runs, rather than killed into images nobody can restore.
    crate::restore::tree::check_rebuildable(&entries)?;
    write_image(&dir.pstree(), Kind::Pstree, &entries)?;
    table.finish();
    // Terminal queues are read out last (they cannot be peeked) and put
    // back if the tree keeps running or the rest fails.
    let queues = table
        .tty
        .finish(&mut table.entries, &entries, args.common.shell_job)?;
    let written = write_tail(dir, &table, tree, args);
    if written.is_err() || args.leave_running || args.leave_stopped {
        queues.put_back();
    }
    written?;
    Ok(std::mem::take(&mut table.hold))
}

/// `files.img`, then the inventory, then sync the directory.
fn write_tail(
    dir: &ImageDir,
    table: &files::FileTable,
    tree: &Tree,
    args: &DumpArgs,
) -> Result<()> {
    write_image(&dir.file_table(), Kind::FileTable, &table.entries)?;
    // The inventory is written last: a directory without it is incomplete.
    let inv = Inventory {
        format_version: crate::images::format::FORMAT_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: crate::proc::kernel_release(),
        arch: "x86_64".into(),
        root_pid: tree.procs[0].pid,
        page_size: 4096,
        dumped_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        options: DumpOptions {
            shell_job: args.common.shell_job,
            leave_running: args.leave_running,
            leave_stopped: args.leave_stopped,
            tcp_established: args.tcp_established,
            network_lock: table
                .hold
                .lock_table()
                .filter(|_| !args.leave_running && !args.leave_stopped),
        },
    };
    write_image(&dir.inventory(), Kind::Inventory, &[&inv])?;
    let d = std::fs::File::open(dir.path()).map_err(|e| Error::file(dir.path(), e))?;
    d.sync_all().map_err(|e| Error::file(dir.path(), e))?;
    Ok(())
}

fn check_images_dir(dir: &Path) -> Result<()> {
    let unusable = |e: std::io::Error| {
        Error::Refused(format!(
            "cannot write images to {}: {e}; give -D an existing directory you can write to",
            dir.display()
        ))
    };
    let md = std::fs::metadata(dir).map_err(unusable)?;
    if !md.is_dir() {
        return Err(unusable(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    // Prove we can write there before touching the task.
    let probe = dir.join(".criu-write-test");
    std::fs::write(&probe, b"").map_err(unusable)?;
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
    check_half_exited(pid, &st)?;
    match st.state {
        'Z' | 'X' => {
            return Err(Error::Refused(format!(
                "pid {pid} is a zombie; there is nothing to dump"
            )))
        }
        _ => {}
    }
    if st.seccomp != 0 {
        return Err(Error::Unsupported(format!(
            "pid {pid} runs under a seccomp filter; dumping those is not supported yet"
        )));
    }
    Ok(())
}

fn dump_seized(
    h: &mut Helper,
    p: &Proc,
    stat: &crate::proc::Stat,
    dir: &ImageDir,
    shared: &mut mm::SharedStored,
    table: &mut files::FileTable,
) -> Result<()> {
    let pid = p.pid;
    let status = crate::proc::read_status(pid)?;
    // The memory map is read before our scratch area exists in the task:
    // /proc/PID/maps, enough to find the gadget and the pages. Its
    // `VmFlags` come from /proc/PID/smaps, read by a thread of ours while
    // the pages are copied: smaps walks every page table of the task
    // (50-70 ms per GiB of memory), maps does not.
    let vmas = crate::proc::read_maps(pid)?;
    let (regs, xstate) = h.get_regs(pid)?;
    // The helper blocks every signal during each injected call and puts the
    // task's registers and mask back after it, so no handler of the task
    // runs in between and the task can always run on if we die.
    let sigmask = h.get_sigmask(pid)?;

    let gadget = find_gadget(h, pid, &vmas)?;
    debug!("pid {pid}: syscall gadget at {gadget:#x}");
    h.set_gadget(pid, gadget)?;
    // Every thread runs its own calls at the same gadget (one address space).
    for &tid in &p.threads[1..] {
        h.set_gadget(tid, gadget)?;
    }
    let mut remote = Remote::new(pid);
    let scratch = remote.call(
        h,
        "mmap(scratch)",
        libc::SYS_mmap,
        [
            0,
            SCRATCH_LEN,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            // Shared: a mapping of its own in smaps, merged with no
            // neighbour, so it can be told apart (see mm::add_vm_flags).
            (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    )?;
    remote.scratch = scratch;
    remote.scratch_len = SCRATCH_LEN;

    // brk(2) takes the task's mmap lock for writing, even brk(0): asked
    // before the smaps walk, which holds it for reading, starts.
    let brk = remote.call(h, "brk(0)", libc::SYS_brk, [0; 6]);
    let collected = std::thread::scope(|s| {
        let brk = brk?;
        // Started once the scratch area exists and brk is known: the
        // injected mmap and brk would otherwise wait for the walk.
        let smaps = s.spawn(move || crate::proc::read_smaps(pid));
        let smaps = move || {
            let full = smaps
                .join()
                .map_err(|_| Error::Unsupported("the thread reading smaps panicked".into()))??;
            Ok((full, (scratch, scratch + SCRATCH_LEN)))
        };
        collect_and_write(
            h, &remote, p, stat, &status, &vmas, smaps, brk, regs, xstate, sigmask, dir, shared,
            table,
        )
    });
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
    p: &Proc,
    stat: &crate::proc::Stat,
    status: &crate::proc::Status,
    vmas: &[crate::proc::SmapsVma],
    smaps: impl FnOnce() -> Result<(Vec<crate::proc::SmapsVma>, (u64, u64))>,
    brk: u64,
    regs: shared_ipc::UserRegs,
    xstate: Vec<u8>,
    sigmask: u64,
    dir: &ImageDir,
    shared: &mut mm::SharedStored,
    table: &mut files::FileTable,
) -> Result<()> {
    let pid = remote.pid;
    info!("collecting task state of pid {pid}");
    let core = task::collect(h, remote, status, p.stopped, regs, xstate, sigmask)?;
    let mut thread_cores = Vec::new();
    for &tid in &p.threads[1..] {
        // One thread at a time, sharing the process's scratch area.
        let (tregs, txstate) = h.get_regs(tid)?;
        let tmask = h.get_sigmask(tid)?;
        let tr = Remote {
            pid: tid,
            ..*remote
        };
        thread_cores.push(task::collect_thread(h, &tr, pid, tregs, txstate, tmask)?);
    }
    info!("collecting memory of pid {pid}");
    let mut mm = mm::collect(pid, stat, brk, vmas, table)?;
    info!("collecting descriptors of pid {pid}");
    let fds = table.collect(pid)?;
    let fs = files::collect_fs(pid, status)?;

    info!("writing images of pid {pid} to {}", dir.path().display());
    write_image(&dir.core(pid), Kind::Core, &[&core])?;
    for c in &thread_cores {
        write_image(&dir.core(c.tid), Kind::Core, &[c])?;
    }
    write_image(&dir.fs(pid), Kind::Fs, &[&fs])?;
    write_image(&dir.files(pid), Kind::Files, &fds)?;
    let bytes = mm::write_pages(h, remote, &mm, dir, shared)?;
    info!("pid {pid}: {bytes} bytes of memory written");
    let (full, scratch) = smaps()?;
    mm::add_vm_flags(pid, &mut mm, vmas, &full, scratch)?;
    write_image(&dir.mm(pid), Kind::Mm, &[&mm])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfork_wait_recognised() {
        assert!(in_vfork("wait_for_vfork_done", 'D'));
        assert!(in_vfork("kernel_clone\n", 'D'));
        assert!(!in_vfork("kernel_clone", 'R'));
        assert!(!in_vfork("do_wait", 'S'));
        assert!(!in_vfork("", 'D'));
    }
}
