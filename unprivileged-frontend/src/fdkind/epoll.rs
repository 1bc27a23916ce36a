//! Open file descriptions of epoll instances (see epoll(7)).
//!
//! An epoll instance's interest list is read from its fdinfo (`tfd:` lines,
//! see proc(5)): for each registration the descriptor number it was added
//! with, the events and the user data. Restore creates an empty instance
//! in criu; the registrations name the task's descriptor numbers, so they
//! are made by epoll_ctl(2) injected into the task once all of its
//! descriptors are in place ([`after_install`]).

use super::{fdinfo_flags, kernel_dev_to_user, os_err};
use crate::error::{Error, Result};
use crate::helper::Helper;
use crate::remote::{errno_of, Remote};
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;

/// An epoll instance.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EpollEntry {
    /// Open flags without `O_CLOEXEC`.
    pub flags: u32,
    /// Its interest list, in fdinfo order.
    pub targets: Vec<EpollTarget>,
}

/// One registration of an epoll instance (see epoll_ctl(2)).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EpollTarget {
    /// The descriptor number it was added with, in the task that added it.
    pub fd: i32,
    /// `struct epoll_event` `events` (`EPOLLIN`, `EPOLLET`, `EPOLLONESHOT`, ...).
    pub events: u32,
    /// `struct epoll_event` `data`, opaque to the kernel.
    pub data: u64,
    /// Inode number of the registered file, to check the task's descriptor
    /// `fd` still is that file.
    pub ino: u64,
    /// Its device, in stat(2) `st_dev` encoding.
    pub dev: u64,
}

fn bad(detail: String) -> Error {
    Error::parse("epoll fdinfo", detail)
}

/// Parse the `tfd:` lines of an epoll fdinfo text:
/// `tfd: FD events: HEX data: HEX pos:N ino:HEX sdev:HEX`.
///
/// Errors: [`Error::Parse`] naming the malformed line.
pub fn parse_targets(fdinfo: &str) -> Result<Vec<EpollTarget>> {
    let mut out = Vec::new();
    for line in fdinfo.lines().filter(|l| l.starts_with("tfd:")) {
        let mut t = EpollTarget {
            fd: -1,
            events: 0,
            data: 0,
            ino: 0,
            dev: 0,
        };
        // Keys and values are separated by ':' and blanks, in both forms
        // ("events:  19" and "ino:f9578").
        let flat = line.replace(':', ": ");
        let toks: Vec<&str> = flat.split_whitespace().collect();
        let mut seen = 0;
        for kv in toks.chunks(2) {
            let [k, v] = kv else {
                return Err(bad(format!("odd token count in {line:?}")));
            };
            let hex =
                |v: &str| u64::from_str_radix(v, 16).map_err(|e| bad(format!("{line:?}: {e}")));
            match *k {
                "tfd:" => {
                    t.fd = v.parse().map_err(|e| bad(format!("{line:?}: {e}")))?;
                    seen |= 1;
                }
                "events:" => {
                    t.events = hex(v)? as u32;
                    seen |= 2;
                }
                "data:" => {
                    t.data = hex(v)?;
                    seen |= 4;
                }
                "ino:" => t.ino = hex(v)?,
                "sdev:" => t.dev = kernel_dev_to_user(hex(v)?),
                _ => {}
            }
        }
        if seen != 7 {
            return Err(bad(format!("missing tfd, events or data in {line:?}")));
        }
        out.push(t);
    }
    Ok(out)
}

/// Dump the epoll instance at descriptor `epfd` of task `pid` from its
/// fdinfo text, checking that each registration's descriptor number in
/// `pid` still names the registered file (it may have been closed or
/// replaced since epoll_ctl, which the kernel keeps registered; that is
/// not restorable by number): by kcmp(2) `KCMP_EPOLL_TFD`, or where the
/// kernel lacks it by inode and device (which cannot tell two eventfds,
/// say, apart: they share one anonymous inode).
///
/// Errors: [`Error::Parse`]; [`Error::Unsupported`] naming the descriptor
/// whose registration cannot be restored.
pub fn dump(pid: i32, epfd: i32, fdinfo: &str) -> Result<EpollEntry> {
    let targets = parse_targets(fdinfo)?;
    for t in &targets {
        let p = crate::proc::path(pid, &format!("fd/{}", t.fd));
        let same_inode = || {
            std::fs::metadata(&p).is_ok_and(|md| {
                use std::os::unix::fs::MetadataExt;
                md.ino() == t.ino && md.dev() == t.dev
            })
        };
        let ok = match crate::sys::kcmp_epoll_tfd(pid, t.fd, epfd, t.fd) {
            Ok(same) => same,
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => false,
            Err(_) => same_inode(),
        };
        if !ok {
            return Err(Error::Unsupported(format!(
                "pid {pid}: an epoll instance watches a file registered as fd {} that is no longer open at that number (closed or replaced after epoll_ctl)",
                t.fd
            )));
        }
    }
    Ok(EpollEntry {
        flags: fdinfo_flags(fdinfo)?,
        targets,
    })
}

/// A new, empty epoll instance in criu with the dumped flags; its
/// registrations are made by [`after_install`].
///
/// Errors: epoll_create1(2) or fcntl(2) failed.
pub fn restore(e: &EpollEntry) -> Result<OwnedFd> {
    let fd = nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC)
        .map_err(|err| os_err("epoll_create1", err))?
        .0;
    super::set_status_flags(std::os::fd::AsFd::as_fd(&fd), e.flags, "epoll")?;
    Ok(fd)
}

/// `struct epoll_event` as the x86-64 kernel reads it (packed: `events` at
/// 0, `data` at 4; see epoll_ctl(2)).
pub fn event_bytes(events: u32, data: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&events.to_ne_bytes());
    b[4..].copy_from_slice(&data.to_ne_bytes());
    b
}

/// Register every target of `e` with the epoll instance at descriptor `fd`
/// of the task `r`, by injected epoll_ctl(2) `EPOLL_CTL_ADD`. Call it once
/// every descriptor of the task is in place. A registration that already
/// exists (`EEXIST`: the instance is shared with a task that made it
/// already) is left as it is.
///
/// Errors: [`Error::Injected`] naming the registered descriptor.
pub fn after_install(h: &mut Helper, r: &Remote, fd: i32, e: &EpollEntry) -> Result<()> {
    for t in &e.targets {
        let addr = r.put(h, 0, &event_bytes(t.events, t.data))?;
        let ret = r.raw(
            h,
            libc::SYS_epoll_ctl,
            [
                fd as u64,
                libc::EPOLL_CTL_ADD as u64,
                t.fd as u64,
                addr,
                0,
                0,
            ],
        )?;
        match errno_of(ret) {
            None | Some(nix::errno::Errno::EEXIST) => {}
            Some(errno) => {
                return Err(Error::Injected {
                    pid: r.pid,
                    call: format!("epoll_ctl({fd}, EPOLL_CTL_ADD, {})", t.fd),
                    errno,
                })
            }
        }
    }
    crate::debug!(
        "pid {}: epoll fd {fd}: {} registrations",
        r.pid,
        e.targets.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
    use std::os::fd::{AsFd, AsRawFd};

    #[test]
    fn layout_matches_libc() {
        assert_eq!(std::mem::size_of::<libc::epoll_event>(), 12);
        assert_eq!(std::mem::offset_of!(libc::epoll_event, events), 0);
        assert_eq!(std::mem::offset_of!(libc::epoll_event, u64), 4);
        let b = event_bytes(0x8000_0019, 0x1122_3344_5566_7788);
        assert_eq!(b[..4], 0x8000_0019u32.to_ne_bytes());
        assert_eq!(b[4..], 0x1122_3344_5566_7788u64.to_ne_bytes());
    }

    #[test]
    fn interest_list_round_trip() {
        let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        let ev = crate::sys::eventfd(0, 0).unwrap();
        ep.add(
            r.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, u64::MAX - 5),
        )
        .unwrap();
        ep.add(
            ev.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLOUT | EpollFlags::EPOLLONESHOT, 7),
        )
        .unwrap();
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", ep.0.as_raw_fd())).unwrap();
        let e = dump(std::process::id() as i32, ep.0.as_raw_fd(), &info).unwrap();
        let by_fd = |fd: i32| e.targets.iter().find(|t| t.fd == fd).unwrap().clone();
        let t = by_fd(r.as_raw_fd());
        assert_eq!(t.data, u64::MAX - 5);
        assert_eq!(
            t.events & !(libc::EPOLLHUP | libc::EPOLLERR) as u32,
            (libc::EPOLLIN | libc::EPOLLET) as u32
        );
        let t = by_fd(ev.as_raw_fd());
        assert_eq!(t.data, 7);
        assert_ne!(t.events & libc::EPOLLONESHOT as u32, 0);
        assert_eq!(e.targets.len(), 2);
        let n = restore(&e).unwrap();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", n.as_raw_fd())).unwrap();
        assert!(parse_targets(&info).unwrap().is_empty());
    }

    #[test]
    fn closed_target_is_refused() {
        let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let ev = crate::sys::eventfd(0, 0).unwrap();
        let dup = ev.try_clone().unwrap();
        ep.add(ev.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 1))
            .unwrap();
        let num = ev.as_raw_fd();
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", ep.0.as_raw_fd())).unwrap();
        assert!(info.contains(&format!("tfd: {num:>8}")), "{info}");
        let me = std::process::id() as i32;
        assert!(dump(me, ep.0.as_raw_fd(), &info).is_ok());

        // Another eventfd put at that number (`dup` keeps the registered
        // one open): the same anonymous inode, yet not the registered file;
        // kcmp(2) KCMP_EPOLL_TFD tells them apart.
        let other = crate::sys::eventfd(0, libc::EFD_CLOEXEC).unwrap();
        nix::unistd::dup2(other.as_raw_fd(), num).unwrap();
        let err = dump(me, ep.0.as_raw_fd(), &info).unwrap_err().to_string();
        assert!(err.contains(&format!("registered as fd {num}")), "{err}");

        // Closed: refused too.
        drop(ev);
        let err = dump(me, ep.0.as_raw_fd(), &info).unwrap_err().to_string();
        assert!(err.contains(&format!("registered as fd {num}")), "{err}");
        drop(dup);
    }
}
