//! Open file descriptions of fanotify groups (see fanotify(7),
//! fanotify_init(2), fanotify_mark(2)).
//!
//! The group's flags and its marks are read from fdinfo (`fanotify` lines,
//! see proc(5)): marks on an inode (named by a path as for inotify, see
//! [`super::inotify::name_watch`]), on a mount (named by its mount point,
//! from `mnt_id` and `/proc/PID/mountinfo`) and on a whole filesystem
//! (named by a mount of it). Restore makes a new group in criu with the
//! same flags and adds each mark with its mask and ignore mask.
//!
//! Events queued at dump time, and answers owed to permission events, are
//! not saved (a warning says so). Creating a group needs `CAP_SYS_ADMIN`
//! for most flags, at restore as at the original fanotify_init(2).

use super::inotify::{mount_of, name_watch, RawWatch};
use super::{fdinfo_flags, kernel_dev_to_user, os_err};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// `FAN_MARK_ADD`, `FAN_MARK_MOUNT`, `FAN_MARK_FILESYSTEM`,
/// `FAN_MARK_IGNORED_MASK`, `FAN_MARK_IGNORE` (see fanotify_mark(2)).
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
const FAN_MARK_IGNORE: u32 = 0x400;

/// A fanotify group.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FanotifyEntry {
    /// Open flags of the description without `O_CLOEXEC`.
    pub flags: u32,
    /// fanotify_init(2) `flags` (fdinfo `fanotify flags:`).
    pub init_flags: u32,
    /// fanotify_init(2) `event_f_flags` (fdinfo `event-flags:`).
    pub event_flags: u32,
    /// Its marks.
    pub marks: Vec<FanotifyMark>,
}

/// What a fanotify mark is on.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MarkTarget {
    /// A file or directory, by path.
    Inode(String),
    /// A mount, by its mount point.
    Mount(String),
    /// A whole filesystem, by a mount point of it.
    Filesystem(String),
}

/// One mark (see fanotify_mark(2)).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FanotifyMark {
    /// What it is on.
    pub target: MarkTarget,
    /// Mark flags as fdinfo `mflags:` shows them (`FAN_MARK_IGNORED_SURV_MODIFY`,
    /// `FAN_MARK_EVICTABLE`, `FAN_MARK_IGNORE`).
    pub mflags: u32,
    /// Event mask.
    pub mask: u64,
    /// Ignore mask.
    pub ignored_mask: u64,
}

impl FanotifyEntry {
    /// Check an entry read from an image: every mark is on an absolute
    /// path.
    ///
    /// Errors: what is wrong, for an image error.
    pub fn check(&self) -> std::result::Result<(), String> {
        for m in &self.marks {
            let (MarkTarget::Inode(p) | MarkTarget::Mount(p) | MarkTarget::Filesystem(p)) =
                &m.target;
            if !p.starts_with('/') {
                return Err(format!("fanotify mark on {p:?}: path not absolute"));
            }
        }
        Ok(())
    }
}

fn bad(detail: String) -> Error {
    Error::parse("fanotify fdinfo", detail)
}

/// The `key:HEX` fields of one fdinfo line.
fn fields(line: &str) -> Result<Vec<(&str, &str)>> {
    Ok(line
        .split_whitespace()
        .filter_map(|t| t.split_once(':'))
        .collect())
}

fn hex(line: &str, k: &str, v: &str) -> Result<u64> {
    u64::from_str_radix(v, 16).map_err(|e| bad(format!("{line:?}: {k}: {e}")))
}

/// The mount point of mount `mnt_id` of task `pid` (`/proc/PID/mountinfo`).
fn mount_point(pid: i32, mnt_id: u64) -> Option<String> {
    let text = std::fs::read_to_string(crate::proc::path(pid, "mountinfo")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && f[0].parse::<u64>().ok()? == mnt_id).then(|| f[4].replace("\\040", " "))
    })
}

/// Dump the fanotify group `fd` (criu's duplicate; only FIONREAD is done
/// on it) of task `pid` from its fdinfo text; `hints` as for inotify.
///
/// Errors: [`Error::Parse`]; [`Error::Unsupported`] for a mark whose
/// inode, mount or filesystem criu cannot name.
pub fn dump(pid: i32, fd: BorrowedFd<'_>, fdinfo: &str, hints: &[String]) -> Result<FanotifyEntry> {
    let mut init_flags = None;
    let mut event_flags = 0;
    let mut marks = Vec::new();
    for line in fdinfo.lines() {
        let Some(rest) = line.strip_prefix("fanotify ") else {
            continue;
        };
        let kv = fields(rest)?;
        let get = |k: &str| kv.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        if let Some(v) = get("flags") {
            init_flags = Some(hex(line, "flags", v)? as u32);
            event_flags = hex(line, "event-flags", get("event-flags").unwrap_or("0"))? as u32;
            continue;
        }
        let num = |k: &str| -> Result<u64> {
            hex(
                line,
                k,
                get(k).ok_or_else(|| bad(format!("no {k} in {line:?}")))?,
            )
        };
        let (mflags, mask, ignored_mask) =
            (num("mflags")? as u32, num("mask")?, num("ignored_mask")?);
        let unnamed = |what: String| {
            Error::Unsupported(format!(
                "pid {pid}: a fanotify mark is on {what}, which criu cannot name by a path"
            ))
        };
        let target = if let Some(id) = get("mnt_id") {
            let id = hex(line, "mnt_id", id)?;
            MarkTarget::Mount(mount_point(pid, id).ok_or_else(|| unnamed(format!("mount {id}")))?)
        } else if get("ino").is_some() {
            let handle = get("f_handle").unwrap_or("");
            let w = RawWatch {
                wd: 0,
                ino: num("ino")?,
                dev: kernel_dev_to_user(num("sdev")?),
                mask: 0,
                handle_type: num("fhandle-type").unwrap_or(0) as i32,
                handle: (0..handle.len() / 2)
                    .map(|i| u8::from_str_radix(&handle[2 * i..2 * i + 2], 16))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| bad(format!("{line:?}: f_handle: {e}")))?,
            };
            MarkTarget::Inode(name_watch(&w, hints).ok_or_else(|| {
                unnamed(format!(
                    "inode {} of device {}:{}",
                    w.ino,
                    libc::major(w.dev),
                    libc::minor(w.dev)
                ))
            })?)
        } else {
            let dev = kernel_dev_to_user(num("sdev")?);
            MarkTarget::Filesystem(mount_of(dev).ok_or_else(|| {
                unnamed(format!(
                    "the filesystem of device {}:{}",
                    libc::major(dev),
                    libc::minor(dev)
                ))
            })?)
        };
        marks.push(FanotifyMark {
            target,
            mflags,
            mask,
            ignored_mask,
        });
    }
    let init_flags = init_flags.ok_or_else(|| bad("no `fanotify flags:` line".into()))?;
    if let Ok(n) = crate::sys::fionread(fd) {
        if n > 0 {
            crate::warn!(
                "pid {pid}: {n} bytes of fanotify events queued at dump are not saved; the restored process will not see them"
            );
        }
    }
    Ok(FanotifyEntry {
        flags: fdinfo_flags(fdinfo)?,
        init_flags,
        event_flags,
        marks,
    })
}

/// A new fanotify group in criu with the dumped flags and marks.
///
/// Errors: fanotify_init(2) (`EPERM` without `CAP_SYS_ADMIN`) or a
/// fanotify_mark(2) failed, naming the mark.
pub fn restore(e: &FanotifyEntry) -> Result<OwnedFd> {
    // The group keeps its init flags (fdinfo shows them), FAN_CLOEXEC too:
    // create it with exactly the dumped ones, then make criu's descriptor
    // close-on-exec (the task's gets its own flag when it is installed).
    let fd = crate::sys::fanotify_init(e.init_flags, e.event_flags).map_err(|err| {
        os_err(
            format!(
                "fanotify_init({:#x}) (a fanotify group needs the rights it was created with)",
                e.init_flags
            ),
            err,
        )
    })?;
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|err| os_err("fanotify: F_SETFD", err))?;
    for m in &e.marks {
        let (path, kind) = match &m.target {
            MarkTarget::Inode(p) => (p, 0),
            MarkTarget::Mount(p) => (p, FAN_MARK_MOUNT),
            MarkTarget::Filesystem(p) => (p, FAN_MARK_FILESYSTEM),
        };
        let c = std::ffi::CString::new(path.as_str())
            .map_err(|_| Error::Refused(format!("fanotify mark path {path:?} has a NUL byte")))?;
        let base = FAN_MARK_ADD | kind | (m.mflags & !FAN_MARK_IGNORE);
        let mark = |flags: u32, mask: u64| {
            crate::sys::fanotify_mark(fd.as_fd(), flags, mask, &c).map_err(|err| {
                os_err(
                    format!("fanotify_mark({path}, flags {flags:#x}, mask {mask:#x})"),
                    err,
                )
            })
        };
        if m.mask != 0 {
            mark(base, m.mask)?;
        }
        if m.ignored_mask != 0 {
            let how = if m.mflags & FAN_MARK_IGNORE != 0 {
                FAN_MARK_IGNORE
            } else {
                FAN_MARK_IGNORED_MASK
            };
            mark(base | how, m.ignored_mask)?;
        }
    }
    super::set_status_flags(fd.as_fd(), e.flags, "fanotify")?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fdinfo(fd: &OwnedFd) -> String {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap()
    }
    fn mark_lines(fd: &OwnedFd) -> Vec<String> {
        let mut v: Vec<String> = fdinfo(fd)
            .lines()
            .filter(|l| l.starts_with("fanotify"))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn group_and_marks_round_trip() {
        // FAN_CLASS_NOTIF | FAN_UNLIMITED_QUEUE, without FAN_CLOEXEC (which
        // the group remembers and fdinfo shows).
        let Ok(fd) = crate::sys::fanotify_init(0x10, libc::O_RDONLY as u32) else {
            eprintln!("skipped: fanotify_init needs CAP_SYS_ADMIN");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let c = |p: &std::path::Path| std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        const FAN_MODIFY: u64 = 0x2;
        const FAN_CLOSE_WRITE: u64 = 0x8;
        const FAN_OPEN: u64 = 0x20;
        const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
        crate::sys::fanotify_mark(
            fd.as_fd(),
            FAN_MARK_ADD,
            FAN_MODIFY | FAN_CLOSE_WRITE,
            &c(&file),
        )
        .unwrap();
        crate::sys::fanotify_mark(
            fd.as_fd(),
            FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
            FAN_OPEN,
            &c(dir.path()),
        )
        .unwrap();
        crate::sys::fanotify_mark(
            fd.as_fd(),
            FAN_MARK_ADD | FAN_MARK_MOUNT,
            FAN_CLOSE_WRITE,
            &c(std::path::Path::new("/")),
        )
        .unwrap();
        crate::sys::fanotify_mark(
            fd.as_fd(),
            FAN_MARK_ADD | FAN_MARK_FILESYSTEM,
            FAN_MODIFY,
            &c(dir.path()),
        )
        .unwrap();
        let e = dump(std::process::id() as i32, fd.as_fd(), &fdinfo(&fd), &[]).unwrap();
        assert_eq!(e.marks.len(), 4, "{e:?}");
        assert!(e.marks.contains(&FanotifyMark {
            target: MarkTarget::Inode(file.to_str().unwrap().into()),
            mflags: 0,
            mask: FAN_MODIFY | FAN_CLOSE_WRITE,
            ignored_mask: 0
        }));
        let n = restore(&e).unwrap();
        assert_eq!(mark_lines(&n), mark_lines(&fd));
        // The restored group reports a change to the file. The mount and
        // filesystem marks also queue events of anything else writing on
        // this machine: look for the one on our file (struct
        // fanotify_event_metadata: event_len u32, vers, reserved,
        // metadata_len u16, mask u64, fd i32, pid i32; see fanotify(7)).
        std::fs::write(&file, "changed").unwrap();
        let mut buf = [0u8; 4096];
        let mut seen = 0u64;
        for _ in 0..1000 {
            let k = nix::unistd::read(n.as_raw_fd(), &mut buf).unwrap();
            let mut off = 0;
            while off + 24 <= k {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                let mask = u64::from_ne_bytes(buf[off + 8..off + 16].try_into().unwrap());
                let efd = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                if efd >= 0 {
                    let path = std::fs::read_link(format!("/proc/self/fd/{efd}")).ok();
                    if path.as_deref() == Some(file.as_path()) {
                        seen |= mask;
                    }
                    let _ = nix::unistd::close(efd);
                }
                off += len.max(24);
            }
            if seen & FAN_MODIFY != 0 {
                break;
            }
        }
        assert_ne!(seen & FAN_MODIFY, 0, "events on the file: {seen:#x}");
    }
}
