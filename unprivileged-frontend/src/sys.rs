//! The frontend's few system calls that need `unsafe`, each wrapped so the
//! rest of the crate stays safe.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Arrange for `fd` to be open at number `target` (without close-on-exec)
/// in the child `cmd` starts; `fd` is closed in this process when `cmd` is
/// dropped.
pub fn pass_fd_as(cmd: &mut Command, fd: OwnedFd, target: i32) {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only
    // calls the async-signal-safe dup2(2) and fcntl(2). `fd` is moved into
    // the closure so it stays open until the command is spawned.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &fd;
            if raw == target {
                if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `prlimit(2)` read of another process's limit: (soft, hard).
///
/// Errors: the errno of prlimit.
pub fn get_rlimit(pid: i32, resource: u32) -> std::io::Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a NULL new limit only reads; `old` is a valid out-pointer.
    let r = unsafe {
        libc::prlimit64(
            pid,
            resource as libc::__rlimit_resource_t,
            std::ptr::null(),
            &mut old,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((old.rlim_cur, old.rlim_max))
}

/// `get_robust_list(2)` of another task: (head address, length in bytes).
///
/// Errors: the errno of the call.
pub fn get_robust_list(tid: i32) -> std::io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: both out-pointers are valid for writes of their sizes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((head, len as u64))
}

/// `kcmp(2)` with `KCMP_FILE`: whether fd `a` and fd `b` of `pid` are the
/// same open file description.
///
/// Errors: the errno of kcmp.
pub fn same_file_description(pid: i32, a: i32, b: i32) -> std::io::Result<bool> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes only integers.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a, b) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r == 0)
}

/// Map one private anonymous read-only page and read it, so that it is
/// backed by the kernel's shared zero page; returns its address.
pub fn map_zero_page() -> Option<u64> {
    // SAFETY: a new anonymous mapping chosen by the kernel; nothing else
    // refers to that range.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: `p` is a readable page we just mapped.
    let _ = unsafe { std::ptr::read_volatile(p as *const u8) };
    Some(p as u64)
}

/// Unmap a page from [`map_zero_page`].
pub fn unmap_zero_page(addr: u64) {
    // SAFETY: `addr` came from `map_zero_page` and is not used afterwards.
    unsafe {
        libc::munmap(addr as *mut libc::c_void, 4096);
    }
}
