//! Open file descriptions of inotify instances (see inotify(7)).
//!
//! Each watch is read from the instance's fdinfo (`inotify wd:` lines, see
//! proc(5)): its watch descriptor, the watched inode and a file handle for
//! it, and the event mask. The inode is named by a path, found with
//! open_by_handle_at(2) (which needs `CAP_DAC_READ_SEARCH`) or else among
//! paths the caller offers (files the tree has open, their directories,
//! cwd) and the entries of those directories. Restore adds the watches by path to a new instance so that each
//! gets its dumped watch descriptor number back: inotify hands out numbers
//! in increasing order, so a watch given a lower number is removed and
//! added again until it gets the right one.
//!
//! Events queued at dump time are not saved (reading them would take them
//! from the task); a warning says how many bytes of them are lost.

use super::{fdinfo_flags, kernel_dev_to_user, os_err};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// An inotify instance.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InotifyEntry {
    /// Open flags without `O_CLOEXEC` (`O_NONBLOCK` matters).
    pub flags: u32,
    /// Its watches, by increasing watch descriptor.
    pub watches: Vec<InotifyWatch>,
}

/// One watch (see inotify_add_watch(2)).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InotifyWatch {
    /// Watch descriptor number.
    pub wd: i32,
    /// Path of the watched file or directory, as criu saw it at dump.
    pub path: String,
    /// Event mask (`IN_MODIFY`, ..., plus `IN_ONESHOT`, `IN_EXCL_UNLINK`).
    pub mask: u32,
    /// The watched inode is a symbolic link itself (added with
    /// `IN_DONT_FOLLOW`).
    pub dont_follow: bool,
}

impl InotifyEntry {
    /// Check an entry read from an image: positive, distinct watch
    /// descriptors on absolute paths.
    ///
    /// Errors: what is wrong, for an image error.
    pub fn check(&self) -> std::result::Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for w in &self.watches {
            if w.wd <= 0 || !seen.insert(w.wd) || !w.path.starts_with('/') {
                return Err(format!(
                    "inotify watch {} on {:?}: watch descriptors must be positive and distinct, paths absolute",
                    w.wd, w.path
                ));
            }
        }
        Ok(())
    }
}

/// One `inotify wd:` line of fdinfo, all numbers hexadecimal there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawWatch {
    /// Watch descriptor.
    pub wd: i32,
    /// Inode number.
    pub ino: u64,
    /// Device, in stat(2) `st_dev` encoding.
    pub dev: u64,
    /// Event mask.
    pub mask: u32,
    /// File handle type (see open_by_handle_at(2)).
    pub handle_type: i32,
    /// File handle bytes.
    pub handle: Vec<u8>,
}

fn bad(detail: String) -> Error {
    Error::parse("inotify fdinfo", detail)
}

/// Parse the `inotify wd:` lines of an fdinfo text.
///
/// Errors: [`Error::Parse`] naming the malformed line.
pub fn parse_watches(fdinfo: &str) -> Result<Vec<RawWatch>> {
    let mut out = Vec::new();
    for line in fdinfo.lines() {
        let Some(rest) = line.strip_prefix("inotify ") else {
            continue;
        };
        let mut w = RawWatch::default();
        let mut seen = 0;
        for tok in rest.split_whitespace() {
            let Some((k, v)) = tok.split_once(':') else {
                continue;
            };
            let hex = || u64::from_str_radix(v, 16).map_err(|e| bad(format!("{line:?}: {k}: {e}")));
            match k {
                "wd" => {
                    w.wd = hex()? as i32;
                    seen |= 1;
                }
                "ino" => {
                    w.ino = hex()?;
                    seen |= 2;
                }
                "sdev" => {
                    w.dev = kernel_dev_to_user(hex()?);
                    seen |= 4;
                }
                "mask" => {
                    w.mask = hex()? as u32;
                    seen |= 8;
                }
                "fhandle-type" => w.handle_type = hex()? as i32,
                "f_handle" => {
                    w.handle = (0..v.len() / 2)
                        .map(|i| u8::from_str_radix(&v[2 * i..2 * i + 2], 16))
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|e| bad(format!("{line:?}: f_handle: {e}")))?;
                }
                _ => {}
            }
        }
        if seen != 15 {
            return Err(bad(format!("missing wd, ino, sdev or mask in {line:?}")));
        }
        out.push(w);
    }
    out.sort_by_key(|w| w.wd);
    Ok(out)
}

/// The mount point of a mount of the file system with device `dev`
/// (stat(2) encoding), preferring one of its root, from
/// `/proc/self/mountinfo` (see proc(5)).
pub(crate) fn mount_of(dev: u64) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let mut best: Option<String> = None;
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() < 5 || f[2] != want {
            continue;
        }
        let mp = f[4].replace("\\040", " ");
        if f[3] == "/" {
            return Some(mp);
        }
        best.get_or_insert(mp);
    }
    best
}

fn same_inode(path: &str, w: &RawWatch) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == w.ino && m.dev() == w.dev)
}

/// A path naming the watched inode: by its file handle if the kernel lets
/// us, else the first of `hints`, a hint's parent directory, or an entry
/// of either, that is it.
pub(crate) fn name_watch(w: &RawWatch, hints: &[String]) -> Option<String> {
    if !w.handle.is_empty() {
        if let Some(mp) = mount_of(w.dev) {
            // Not O_PATH: open_by_handle_at(2) refuses that as `mount_fd`.
            if let Ok(m) = super::open_path(&mp, libc::O_RDONLY | libc::O_DIRECTORY) {
                if let Ok(f) = crate::sys::open_by_handle(m.as_fd(), w.handle_type, &w.handle) {
                    let link = format!("/proc/self/fd/{}", f.as_raw_fd());
                    if let Ok(p) = std::fs::read_link(link) {
                        let p = p.to_string_lossy().into_owned();
                        if same_inode(&p, w) {
                            return Some(p);
                        }
                    }
                }
            }
        }
    }
    for h in hints {
        let parent = std::path::Path::new(h)
            .parent()
            .map(|p| p.to_string_lossy().into_owned());
        for c in std::iter::once(h.clone()).chain(parent) {
            if same_inode(&c, w) {
                return Some(c);
            }
        }
    }
    // One level further: the entries of those directories (a file next to
    // one the process has open, a subdirectory of its cwd).
    for h in hints {
        let p = std::path::Path::new(h);
        for dir in [Some(p), p.parent()].into_iter().flatten() {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in rd.flatten().take(MAX_SCAN) {
                use std::os::unix::fs::DirEntryExt;
                if e.ino() != w.ino {
                    continue;
                }
                let c = e.path().to_string_lossy().into_owned();
                if same_inode(&c, w) {
                    return Some(c);
                }
            }
        }
    }
    None
}

/// Most entries of one directory looked at when naming a watched inode.
const MAX_SCAN: usize = 10_000;

/// Dump the inotify instance `fd` (criu's duplicate; only FIONREAD is done
/// on it) of task `pid` from its fdinfo text; `hints` are paths the watched
/// files may have (see the module documentation).
///
/// Errors: [`Error::Parse`]; [`Error::Unsupported`] for a watch whose
/// inode has no path criu can find (deleted, or outside the hints without
/// `CAP_DAC_READ_SEARCH`).
pub fn dump(pid: i32, fd: BorrowedFd<'_>, fdinfo: &str, hints: &[String]) -> Result<InotifyEntry> {
    let mut watches = Vec::new();
    for w in parse_watches(fdinfo)? {
        let path = name_watch(&w, hints).ok_or_else(|| {
            Error::Unsupported(format!(
                "pid {pid}: inotify watch {} is on inode {} of device {}:{} which criu cannot name by a path (deleted, or not among the files the process has open and criu lacks CAP_DAC_READ_SEARCH)",
                w.wd,
                w.ino,
                libc::major(w.dev),
                libc::minor(w.dev)
            ))
        })?;
        let dont_follow =
            std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        watches.push(InotifyWatch {
            wd: w.wd,
            path,
            mask: w.mask,
            dont_follow,
        });
    }
    if let Ok(n) = crate::sys::fionread(fd) {
        if n > 0 {
            crate::warn!(
                "pid {pid}: {n} bytes of inotify events queued at dump are not saved; the restored process will not see them"
            );
        }
    }
    Ok(InotifyEntry {
        flags: fdinfo_flags(fdinfo)?,
        watches,
    })
}

/// Most add/remove rounds spent reaching one watch descriptor number.
const MAX_WD_ROUNDS: i32 = 1 << 20;

/// A new inotify instance in criu with the dumped watches at their watch
/// descriptor numbers (the `IN_IGNORED` events the extra removals queue
/// are read off before it is returned).
///
/// Errors: a path that no longer exists or cannot be watched (naming it);
/// a watch descriptor that cannot be reached.
pub fn restore(e: &InotifyEntry) -> Result<OwnedFd> {
    let fd = crate::sys::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK)
        .map_err(|err| os_err("inotify_init1", err))?;
    let mut ws = e.watches.clone();
    ws.sort_by_key(|w| w.wd);
    for w in &ws {
        let c = std::ffi::CString::new(w.path.as_str()).map_err(|_| {
            Error::Refused(format!("inotify watch path {:?} has a NUL byte", w.path))
        })?;
        let mask = w.mask
            | if w.dont_follow {
                libc::IN_DONT_FOLLOW
            } else {
                0
            };
        let mut rounds = 0;
        loop {
            let got = crate::sys::inotify_add_watch(fd.as_fd(), &c, mask)
                .map_err(|err| os_err(format!("inotify watch {} on {}", w.wd, w.path), err))?;
            if got == w.wd {
                break;
            }
            rounds += 1;
            if got > w.wd || rounds > MAX_WD_ROUNDS {
                return Err(Error::Refused(format!(
                    "inotify watch on {} got descriptor {got}, not the dumped {} (is it the same file as another watch?)",
                    w.path, w.wd
                )));
            }
            crate::sys::inotify_rm_watch(fd.as_fd(), got)
                .map_err(|err| os_err(format!("inotify_rm_watch({got})"), err))?;
        }
    }
    // Drop the IN_IGNORED events of the removals above.
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = nix::unistd::read(fd.as_raw_fd(), &mut buf) {
        if n == 0 {
            break;
        }
    }
    super::set_status_flags(fd.as_fd(), e.flags, "inotify")?;
    Ok(fd)
}

/// The watches of an fdinfo text as (wd, mask) pairs, for checks.
pub fn wd_masks(fdinfo: &str) -> Result<Vec<(i32, u32)>> {
    Ok(parse_watches(fdinfo)?
        .iter()
        .map(|w| (w.wd, w.mask))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fdinfo(fd: &OwnedFd) -> String {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap()
    }

    #[test]
    fn watches_keep_numbers_paths_and_masks() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "x").unwrap();
        std::fs::write(&b, "y").unwrap();
        let cs = |p: &std::path::Path| std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        let fd = crate::sys::inotify_init1(libc::IN_CLOEXEC).unwrap();
        let w1 = crate::sys::inotify_add_watch(fd.as_fd(), &cs(&a), libc::IN_MODIFY).unwrap();
        let tmp = crate::sys::inotify_add_watch(fd.as_fd(), &cs(&b), libc::IN_OPEN).unwrap();
        crate::sys::inotify_rm_watch(fd.as_fd(), tmp).unwrap();
        let w3 = crate::sys::inotify_add_watch(
            fd.as_fd(),
            &cs(dir.path()),
            libc::IN_CREATE | libc::IN_DELETE | libc::IN_ONESHOT,
        )
        .unwrap();
        assert_eq!((w1, w3), (1, 3));
        let hints = vec![a.to_str().unwrap().to_string()];
        let e = dump(std::process::id() as i32, fd.as_fd(), &fdinfo(&fd), &hints).unwrap();
        assert_eq!(e.watches.len(), 2);
        assert_eq!(e.watches[0].path, a.to_str().unwrap());
        assert_eq!(e.watches[1].path, dir.path().to_str().unwrap());
        let n = restore(&e).unwrap();
        assert_eq!(
            wd_masks(&fdinfo(&n)).unwrap(),
            wd_masks(&fdinfo(&fd)).unwrap()
        );
        assert_eq!(
            crate::sys::fionread(n.as_fd()).unwrap(),
            0,
            "no IN_IGNORED left"
        );
        let fl = nix::fcntl::fcntl(n.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(fl & libc::O_NONBLOCK, 0);
        // The restored watch works.
        std::fs::write(&a, "changed").unwrap();
        let mut buf = [0u8; 256];
        let k = nix::unistd::read(n.as_raw_fd(), &mut buf).unwrap();
        assert!(k >= 16);
        assert_eq!(i32::from_ne_bytes(buf[..4].try_into().unwrap()), 1);
        assert_eq!(
            u32::from_ne_bytes(buf[4..8].try_into().unwrap()),
            libc::IN_MODIFY
        );
    }

    #[test]
    fn named_by_file_handle_when_privileged() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("deep");
        std::fs::write(&a, "x").unwrap();
        let fd = crate::sys::inotify_init1(libc::IN_CLOEXEC).unwrap();
        let c = std::ffi::CString::new(a.to_str().unwrap()).unwrap();
        crate::sys::inotify_add_watch(fd.as_fd(), &c, libc::IN_ATTRIB).unwrap();
        match dump(1, fd.as_fd(), &fdinfo(&fd), &[]) {
            Ok(e) => assert_eq!(e.watches[0].path, a.to_str().unwrap()),
            // Without CAP_DAC_READ_SEARCH only hints can name it.
            Err(e) => assert!(!caps_dac_read_search(), "{e}"),
        }
    }

    fn caps_dac_read_search() -> bool {
        let st = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = st
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap()
            .trim();
        u64::from_str_radix(eff, 16).unwrap() & (1 << 2) != 0
    }

    #[test]
    fn named_as_a_sibling_of_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let open_one = dir.path().join("open");
        let watched = dir.path().join("sub");
        std::fs::write(&open_one, "x").unwrap();
        std::fs::create_dir(&watched).unwrap();
        let w = RawWatch {
            wd: 1,
            ino: std::fs::metadata(&watched).unwrap().ino(),
            dev: std::fs::metadata(&watched).unwrap().dev(),
            mask: libc::IN_CREATE,
            handle_type: 0,
            handle: Vec::new(),
        };
        let hints = vec![open_one.to_str().unwrap().to_string()];
        assert_eq!(name_watch(&w, &hints).as_deref(), watched.to_str());
        assert_eq!(name_watch(&w, &[]), None);
    }

    #[test]
    fn crafted_entries_are_refused() {
        let w = |wd: i32, path: &str| InotifyWatch {
            wd,
            path: path.into(),
            mask: libc::IN_MODIFY,
            dont_follow: false,
        };
        let mut e = InotifyEntry {
            flags: 0,
            watches: vec![w(1, "/a"), w(3, "/b")],
        };
        assert_eq!(e.check(), Ok(()));
        e.watches.push(w(3, "/c"));
        assert!(e.check().is_err(), "duplicate wd");
        e.watches = vec![w(0, "/a")];
        assert!(e.check().is_err(), "wd 0");
        e.watches = vec![w(1, "a")];
        assert!(e.check().is_err(), "relative path");
    }

    #[test]
    fn unnamed_inode_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("gone");
        std::fs::write(&a, "x").unwrap();
        let fd = crate::sys::inotify_init1(libc::IN_CLOEXEC).unwrap();
        let c = std::ffi::CString::new(a.to_str().unwrap()).unwrap();
        let _keep = std::fs::File::open(&a).unwrap();
        crate::sys::inotify_add_watch(fd.as_fd(), &c, libc::IN_MODIFY).unwrap();
        std::fs::remove_file(&a).unwrap();
        let err = dump(1234, fd.as_fd(), &fdinfo(&fd), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pid 1234: inotify watch 1 is on inode"),
            "{err}"
        );
    }
}
