//! Descriptors and filesystem context of a restored task, by injected calls:
//! each file is reopened by path in the task and moved to its number.

use super::mm::close_in;
use crate::error::{Error, Result};
use crate::helper::Helper;
use crate::images::types::{FdEntry, FdKind, FileId, FsEntry, MmEntry, VmaKind};
use crate::info;
use crate::remote::Remote;

/// Open flags never replayed when reopening a file.
const DROP_FLAGS: i32 = libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC;

/// First descriptor number above every descriptor of the image, where
/// restore keeps its own temporary descriptors.
pub fn high_fd_base(files: &[FdEntry]) -> i32 {
    files.iter().map(|f| f.fd + 1).max().unwrap_or(0).max(3)
}

/// The flags a file is reopened with.
pub fn reopen_flags(dumped: u32) -> i32 {
    dumped as i32 & !DROP_FLAGS
}

/// Check that every file the restore reopens is still there and, for
/// regular files, still has the dumped size.
///
/// Errors: [`Error::Refused`] naming the path and what changed.
pub fn check_files_exist(mm: &MmEntry, files: &[FdEntry]) -> Result<()> {
    let mut ids: Vec<&FileId> = Vec::new();
    for v in &mm.vmas {
        if let VmaKind::File(f) = &v.kind {
            ids.push(f);
        }
    }
    for f in files {
        match &f.kind {
            FdKind::Reg { file, .. } => ids.push(file),
            FdKind::Device { path, .. } => {
                stat(path)?;
            }
            _ => {}
        }
    }
    for id in ids {
        let md = stat(&id.path)?;
        if md.is_file() && md.len() != id.size {
            return Err(Error::Refused(format!(
                "{} changed size since dump (was {} bytes, now {})",
                id.path,
                id.size,
                md.len()
            )));
        }
    }
    stat(&mm.exe)?;
    Ok(())
}

fn stat(path: &str) -> Result<std::fs::Metadata> {
    std::fs::metadata(path).map_err(|e| match e.raw_os_error() {
        Some(n) => Error::Refused(format!("{path}: {}", nix::errno::Errno::from_raw(n).desc())),
        None => Error::file(path, e),
    })
}

fn dup3(h: &mut Helper, r: &Remote, from: i32, to: i32, cloexec: bool) -> Result<()> {
    let fl = if cloexec { libc::O_CLOEXEC as u64 } else { 0 };
    r.call(
        h,
        &format!("dup3({from}, {to})"),
        libc::SYS_dup3,
        [from as u64, to as u64, fl, 0, 0, 0],
    )?;
    Ok(())
}

fn set_cloexec(h: &mut Helper, r: &Remote, fd: i32, cloexec: bool) -> Result<()> {
    let v = if cloexec { libc::FD_CLOEXEC as u64 } else { 0 };
    r.call(
        h,
        &format!("fcntl({fd}, F_SETFD)"),
        libc::SYS_fcntl,
        [fd as u64, libc::F_SETFD as u64, v, 0, 0, 0],
    )?;
    Ok(())
}

/// The path last written to the scratch area by [`open_at_target`], so a
/// run of descriptors on the same file (10,000 `/dev/null`s) writes it once.
type PathCache = Option<(String, u64)>;

/// Open `path` in the task and put it at `target`. Descriptors are restored
/// in ascending order, so the kernel's lowest free number usually is
/// `target` already: then one `openat` (with `O_CLOEXEC` as dumped) does it.
fn open_at_target(
    h: &mut Helper,
    r: &Remote,
    cache: &mut PathCache,
    path: &str,
    flags: i32,
    target: i32,
    cloexec: bool,
) -> Result<()> {
    let addr = match cache {
        Some((p, a)) if p == path => *a,
        _ => {
            let a = r.put_cstr(h, 0, path)?;
            *cache = Some((path.to_string(), a));
            a
        }
    };
    let fl = flags | if cloexec { libc::O_CLOEXEC } else { 0 };
    let tmp = r.call(
        h,
        &format!("openat({path})"),
        libc::SYS_openat,
        [libc::AT_FDCWD as i64 as u64, addr, fl as u64, 0, 0, 0],
    )? as i32;
    if tmp == target {
        return Ok(());
    }
    dup3(h, r, tmp, target, cloexec)?;
    close_in(h, r, tmp)
}

/// Put every descriptor of `files-PID.img` at its number, in fd order (so a
/// freshly opened temporary is never an already placed descriptor).
///
/// Errors: an injected call failed (naming the path).
pub fn restore_fds(h: &mut Helper, r: &Remote, files: &[FdEntry]) -> Result<()> {
    let mut cache: PathCache = None;
    for f in files {
        match &f.kind {
            FdKind::Reg { file, flags, pos } => {
                let fl = reopen_flags(*flags);
                open_at_target(h, r, &mut cache, &file.path, fl, f.fd, f.cloexec)?;
                if *pos != 0 && fl & libc::O_PATH == 0 {
                    r.call(
                        h,
                        &format!("lseek({}, {pos})", f.fd),
                        libc::SYS_lseek,
                        [f.fd as u64, *pos, libc::SEEK_SET as u64, 0, 0, 0],
                    )?;
                }
            }
            FdKind::Device { path, flags } => {
                open_at_target(
                    h,
                    r,
                    &mut cache,
                    path,
                    reopen_flags(*flags),
                    f.fd,
                    f.cloexec,
                )?;
            }
            FdKind::Dup { of } => dup3(h, r, *of, f.fd, f.cloexec)?,
            FdKind::Inherited { was } => {
                crate::debug!("pid {}: fd {} inherited from criu (was {was})", r.pid, f.fd);
                if f.cloexec {
                    set_cloexec(h, r, f.fd, true)?;
                }
            }
        }
    }
    info!("pid {}: {} descriptors restored", r.pid, files.len());
    Ok(())
}

/// Working directory, root and umask. The dumped cwd is a path as seen from
/// criu's root (`/proc/PID/cwd`), so it is entered before chroot, which
/// leaves the working directory as it is.
///
/// Errors: an injected call failed (naming the directory).
pub fn restore_fs(h: &mut Helper, r: &Remote, fs: &FsEntry) -> Result<()> {
    let p = r.put_cstr(h, 0, &fs.cwd)?;
    r.call(
        h,
        &format!("chdir({})", fs.cwd),
        libc::SYS_chdir,
        [p, 0, 0, 0, 0, 0],
    )?;
    if fs.root != "/" {
        let p = r.put_cstr(h, 0, &fs.root)?;
        r.call(
            h,
            &format!("chroot({})", fs.root),
            libc::SYS_chroot,
            [p, 0, 0, 0, 0, 0],
        )?;
    }
    r.call(
        h,
        "umask",
        libc::SYS_umask,
        [fs.umask as u64, 0, 0, 0, 0, 0],
    )?;
    info!(
        "pid {}: cwd {}, root {}, umask {:03o}",
        r.pid, fs.cwd, fs.root, fs.umask
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_base() {
        let f = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u32;
        assert_eq!(reopen_flags(f), libc::O_WRONLY | libc::O_APPEND);
        let e = |fd| FdEntry {
            fd,
            cloexec: false,
            kind: FdKind::Dup { of: 0 },
        };
        assert_eq!(high_fd_base(&[]), 3);
        assert_eq!(high_fd_base(&[e(0), e(9)]), 10);
    }

    #[test]
    fn missing_file_named() {
        let mut mm = super::super::validate::tests::sample_mm();
        mm.exe = "/nonexistent/criu-test-exe".into();
        mm.vmas.clear();
        let e = check_files_exist(&mm, &[]).unwrap_err().to_string();
        assert_eq!(e, "/nonexistent/criu-test-exe: No such file or directory");
    }
}
