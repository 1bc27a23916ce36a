//! Kinds of open file description beyond regular files and devices, one
//! module each. A kind is dumped from a duplicate of the task's descriptor
//! that criu holds (pidfd_getfd(2)) and restored by creating the open file
//! description in criu itself, which then passes it to the restored task
//! (`SCM_RIGHTS`, see unix(7)); state that only the task can set (epoll
//! registrations by descriptor number, owners, POSIX locks) is set by
//! injected calls once all of the task's descriptors are in place.

pub mod epoll;
pub mod event;
pub mod fanotify;
pub mod inet;
pub mod inotify;
pub mod memfd;
pub mod pidfd;
pub mod pipe;
pub mod tty;
pub mod unix;

use crate::error::Error;

/// The value of the `key:` line of a `/proc/PID/fdinfo/FD` text (see
/// proc(5)), trimmed; `None` when there is no such line.
pub(crate) fn fdinfo_field<'a>(fdinfo: &'a str, key: &str) -> Option<&'a str> {
    fdinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// The `flags:` of an fdinfo text (octal, see proc(5)) without
/// `O_CLOEXEC`, which belongs to the descriptor, not the description.
///
/// Errors: [`Error::Parse`] when the line is missing or not octal.
pub(crate) fn fdinfo_flags(fdinfo: &str) -> Result<u32, Error> {
    let v =
        fdinfo_field(fdinfo, "flags").ok_or_else(|| Error::parse("fdinfo", "no flags: line"))?;
    let f = u32::from_str_radix(v, 8).map_err(|e| Error::parse("fdinfo", format!("flags: {e}")))?;
    Ok(f & !(libc::O_CLOEXEC as u32))
}

/// A system call on a descriptor criu holds failed: `what` names the
/// object and the call (e.g. `pipe:[123]: F_SETPIPE_SZ(1048576)`).
pub(crate) fn os_err(what: impl Into<String>, e: impl Into<std::io::Error>) -> Error {
    Error::File {
        path: what.into().into(),
        source: e.into(),
    }
}

/// open(2) of `path` with `flags` (access mode and status flags) plus
/// `O_CLOEXEC`, as an owned descriptor.
///
/// Errors: the errno of open.
pub(crate) fn open_path(path: &str, flags: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_RDONLY => o.read(true),
        libc::O_WRONLY => o.write(true),
        _ => o.read(true).write(true),
    };
    o.custom_flags(flags & !libc::O_ACCMODE);
    o.open(path).map(std::os::fd::OwnedFd::from)
}

/// A device number as fdinfo prints it (`sdev:`, the kernel's internal
/// `dev_t`: major in the high 12 bits, minor in the low 20) in the
/// encoding of stat(2)'s `st_dev` (see makedev(3)).
pub(crate) fn kernel_dev_to_user(sdev: u64) -> u64 {
    libc::makedev((sdev >> 20) as u32, (sdev & 0xf_ffff) as u32)
}

/// Set the file status flags of a description criu made to the dumped
/// `flags` (`O_NONBLOCK`, `O_ASYNC`, `O_APPEND`, `O_NOATIME`: the ones
/// fcntl(2) `F_SETFL` can change); `what` names it in the error.
///
/// Errors: fcntl failed.
pub(crate) fn set_status_flags(
    fd: std::os::fd::BorrowedFd<'_>,
    flags: u32,
    what: &str,
) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    let keep = libc::O_NONBLOCK | libc::O_ASYNC | libc::O_APPEND | libc::O_NOATIME;
    let fl = nix::fcntl::OFlag::from_bits_truncate(flags as i32 & keep);
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(fl))
        .map(|_| ())
        .map_err(|e| os_err(format!("{what}: F_SETFL({fl:?})"), e))
}
