//! Open file descriptions of pidfds (see pidfd_open(2)): a handle on a
//! process, made again with pidfd_open on the same PID, which restore
//! gives back to a process of the tree (or one still running outside it).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;

/// A pidfd.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PidfdEntry {
    /// The process it refers to (the `Pid:` line of fdinfo, see proc(5)).
    pub pid: i32,
    /// Open flags (`O_RDWR`, `O_NONBLOCK` for `PIDFD_NONBLOCK`).
    pub flags: u32,
}

/// Whether a `/proc/PID/fd/FD` link names a pidfd.
pub fn is_pidfd(link: &str) -> bool {
    link == "anon_inode:[pidfd]" || link.starts_with("pidfd:")
}

/// Read the pidfd from its fdinfo text. `pid` and `fd` name it for errors.
///
/// Errors: the process it refers to has exited and was reaped (fdinfo says
/// `Pid: -1`): such a pidfd cannot be made again.
pub fn dump(pid: i32, fd: i32, fdinfo: &str, flags: u32) -> Result<PidfdEntry> {
    let target: i32 = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "pid {pid} fd {fd}: pidfd without a Pid: line in fdinfo"
            ))
        })?;
    if target <= 0 {
        return Err(Error::Unsupported(format!(
            "pid {pid} fd {fd}: a pidfd of a process that has exited and been reaped cannot be restored; close it before dumping"
        )));
    }
    Ok(PidfdEntry { pid: target, flags })
}

/// Make the pidfd again, in criu (close-on-exec there). `pid` and `fd`
/// name its first user, for errors.
///
/// Errors: the process does not exist (any more).
pub fn restore(e: &PidfdEntry, pid: i32, fd: i32) -> Result<OwnedFd> {
    let nonblock = e.flags & libc::O_NONBLOCK as u32 != 0;
    crate::sys::pidfd_open_flags(e.pid, if nonblock { libc::O_NONBLOCK as u32 } else { 0 }).map_err(
        |err| {
            Error::Refused(format!(
                "pid {pid} fd {fd}: cannot make its pidfd of pid {} again: {err}",
                e.pid
            ))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_make() {
        let me = std::process::id() as i32;
        let e = dump(
            1,
            5,
            &format!("pos:\t0\nflags:\t02004002\nPid:\t{me}\nNSpid:\t{me}\n"),
            0o4002,
        )
        .unwrap();
        assert_eq!(
            e,
            PidfdEntry {
                pid: me,
                flags: 0o4002
            }
        );
        let fd = restore(&e, 1, 5).unwrap();
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .unwrap();
        assert!(info.contains(&format!("Pid:\t{me}")), "{info}");
        assert!(info.contains("flags:\t0200400"), "{info}");
        let gone = dump(1, 5, "Pid:\t-1\n", 0).unwrap_err().to_string();
        assert!(gone.contains("exited"), "{gone}");
        assert!(is_pidfd("anon_inode:[pidfd]"));
        assert!(!is_pidfd("anon_inode:[eventfd]"));
    }
}
