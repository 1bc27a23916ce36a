//! Descriptors (`/proc/PID/fd`, `/proc/PID/fdinfo`, see proc(5)) and the
//! filesystem context (cwd, root, umask).

use crate::error::{Error, Result};
use crate::images::types::{FdEntry, FileEntry, FileId, FileKind, FsEntry};
use crate::proc::{self, Status};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Character devices reopened by path.
const DEVICES: [&str; 6] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

fn is_terminal_path(p: &str) -> bool {
    p.starts_with("/dev/pts/") || p.starts_with("/dev/tty") || p == "/dev/console"
}

/// The open file descriptions of the whole tree, collected process by
/// process: each description gets one [`FileEntry`], whichever processes
/// and descriptor numbers refer to it.
#[derive(Default)]
pub struct FileTable {
    /// One (pid, fd) per description seen so far, sorted in the kernel's
    /// kcmp(2) `KCMP_FILE` order, with the description's id.
    reps: Vec<(i32, i32, u32)>,
    /// The descriptions, by id.
    pub entries: Vec<FileEntry>,
    /// A pidfd of the process whose descriptors are being collected.
    pidfd: Option<(i32, OwnedFd)>,
}

impl FileTable {
    /// Collect every descriptor of `pid`, in fd order, adding the
    /// descriptions not seen yet (in this or an earlier process) to the
    /// table.
    ///
    /// Errors: a descriptor of an unsupported kind (naming pid, fd and
    /// kind), unreadable /proc entries.
    pub fn collect(&mut self, pid: i32, shell_job: bool) -> Result<Vec<FdEntry>> {
        let dir = proc::path(pid, "fd");
        let mut fds: Vec<i32> = std::fs::read_dir(&dir)
            .map_err(|e| Error::proc(&dir, e))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();

        let mut out: Vec<FdEntry> = Vec::new();
        for fd in fds {
            let link = proc::read_link(&proc::path(pid, &format!("fd/{fd}")))?;
            let ipath = proc::path(pid, &format!("fdinfo/{fd}"));
            let info = proc::parse_fdinfo(&proc::read_text(&ipath)?)
                .map_err(|d| Error::parse(&ipath, d))?;
            let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
            let flags = info.flags & !(libc::O_CLOEXEC as u32);

            // The same open file description as a descriptor seen before?
            let at = match self.find(pid, fd) {
                Ok(id) => {
                    out.push(FdEntry { fd, cloexec, id });
                    continue;
                }
                Err(at) => at,
            };
            let kind = classify(pid, fd, &link, flags, info.pos, shell_job)?;
            let id = self.entries.len() as u32;
            self.entries.push(FileEntry { id, kind });
            self.reps.insert(at, (pid, fd, id));
            out.push(FdEntry { fd, cloexec, id });
        }
        Ok(out)
    }

    /// A duplicate, in criu, of descriptor `fd` of `pid` (same open file
    /// description), for the kinds whose state is read through the
    /// description itself (pipe contents, socket queues, ...). See
    /// pidfd_getfd(2): it needs the same ptrace access criu has to the task
    /// anyway (in setuid mode the task is the caller's own and dumpable).
    ///
    /// Errors: [`Error::Unsupported`] naming pid, fd and the errno.
    pub fn take_fd(&mut self, pid: i32, fd: i32) -> Result<OwnedFd> {
        let fail = |what: &str, e: std::io::Error| {
            Error::Unsupported(format!("pid {pid} fd {fd}: {what}: {e}"))
        };
        if self.pidfd.as_ref().is_none_or(|(p, _)| *p != pid) {
            let pf = crate::sys::pidfd_open(pid).map_err(|e| fail("pidfd_open", e))?;
            self.pidfd = Some((pid, pf));
        }
        let (_, pf) = self.pidfd.as_ref().expect("set just above");
        crate::sys::pidfd_getfd(pf, fd).map_err(|e| fail("pidfd_getfd", e))
    }

    /// Look (`pid`, `fd`) up among the representatives: `Ok` with the id of
    /// the same open file description, or `Err` with where it goes in the
    /// order. If the kernel gives no order (kcmp says "unordered" or
    /// fails), compare with every one instead.
    fn find(&self, pid: i32, fd: i32) -> std::result::Result<u32, usize> {
        let reps = &self.reps;
        let mut lo = 0;
        let mut hi = reps.len();
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (rpid, rfd, id) = reps[mid];
            match crate::sys::kcmp_file_order(rpid, rfd, pid, fd) {
                Some(std::cmp::Ordering::Equal) => return Ok(id),
                Some(std::cmp::Ordering::Less) => lo = mid + 1,
                Some(std::cmp::Ordering::Greater) => hi = mid,
                None => {
                    return reps
                        .iter()
                        .find(|&&(rp, rf, _)| {
                            crate::sys::same_file_description(rp, rf, pid, fd).unwrap_or(false)
                        })
                        .map(|r| r.2)
                        .ok_or(reps.len())
                }
            }
        }
        Err(lo)
    }
}

fn classify(
    pid: i32,
    fd: i32,
    link: &str,
    flags: u32,
    pos: u64,
    shell_job: bool,
) -> Result<FileKind> {
    let unsupported = |what: String| {
        Err(Error::Unsupported(format!(
            "pid {pid} fd {fd}: {what} ({link}) is not supported yet; close it in the process (or start it without it) before dumping"
        )))
    };
    if !link.starts_with('/') {
        // pipe:[N], socket:[N], anon_inode:[eventfd], ...
        if fd <= 2 && (link.starts_with("pipe:") || link.starts_with("socket:")) {
            crate::warn!(
                "pid {pid} fd {fd} is {link}, whose other end is not dumped; after restore fd {fd} will be the restoring criu's own fd {fd}"
            );
            return Ok(FileKind::Inherited {
                was: link.to_string(),
            });
        }
        let kind = link.split(':').next().unwrap_or(link);
        let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        return unsupported(format!("{article} {kind} descriptor"));
    }
    if link.ends_with(" (deleted)") {
        return unsupported("an unlinked (deleted) file".into());
    }
    if is_terminal_path(link) && link != "/dev/tty" {
        if fd <= 2 {
            if !shell_job {
                crate::warn!(
                    "pid {pid} fd {fd} is the terminal {link}; it will be the restoring criu's fd {fd} (use --shell-job to say so)"
                );
            }
            return Ok(FileKind::Inherited {
                was: link.to_string(),
            });
        }
        return unsupported("a terminal".into());
    }
    // Metadata of the open file itself, not whatever the path names now.
    let fdpath = proc::path(pid, &format!("fd/{fd}"));
    let md = std::fs::metadata(&fdpath).map_err(|e| Error::proc(&fdpath, e))?;
    let ft = md.file_type();
    if ft.is_char_device() {
        if DEVICES.contains(&link) {
            return Ok(FileKind::Device {
                path: link.to_string(),
                flags,
            });
        }
        return unsupported("a character device".into());
    }
    if ft.is_file() || ft.is_dir() {
        if md.nlink() == 0 {
            return unsupported("an unlinked file".into());
        }
        return Ok(FileKind::Reg {
            file: FileId {
                path: link.to_string(),
                size: md.size(),
                dev: md.dev(),
                ino: md.ino(),
                mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            },
            flags,
            pos,
        });
    }
    if ft.is_fifo() {
        if fd <= 2 {
            return Ok(FileKind::Inherited {
                was: link.to_string(),
            });
        }
        return unsupported("a FIFO".into());
    }
    unsupported("this kind of file".into())
}

/// Collect cwd, root and umask.
///
/// Errors: unreadable /proc links; a cwd or root that was deleted.
pub fn collect_fs(pid: i32, status: &Status) -> Result<FsEntry> {
    let cwd = proc::read_link(&proc::path(pid, "cwd"))?;
    let root = proc::read_link(&proc::path(pid, "root"))?;
    for (what, p) in [("working directory", &cwd), ("root directory", &root)] {
        if let Some(gone) = p.strip_suffix(" (deleted)") {
            return Err(Error::Unsupported(format!(
                "pid {pid}: its {what} {gone} was deleted"
            )));
        }
    }
    Ok(FsEntry {
        cwd,
        root,
        umask: status.umask,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn take_fd_gives_the_same_description() {
        let me = std::process::id() as i32;
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let mut t = FileTable::default();
        let copy = t.take_fd(me, f.as_raw_fd()).unwrap();
        assert!(
            crate::sys::same_file_description(me, f.as_raw_fd(), me, copy.as_raw_fd()).unwrap()
        );
        let e = t.take_fd(me, 1 << 19).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {me} fd {}", 1 << 19)), "{e}");
    }
}
