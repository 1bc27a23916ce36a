//! userfaultfd(2) from the outside: the ioctls criu issues on a
//! userfaultfd that a task created for its own memory, and a read-only
//! mapping of an image file to copy from. Kernel interface:
//! ioctl_userfaultfd(2), linux/userfaultfd.h,
//! Documentation/admin-guide/mm/userfaultfd.rst.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

/// `UFFD_USER_MODE_ONLY`: a userfaultfd that handles only user-mode
/// faults, which any process may create whatever
/// `vm.unprivileged_userfaultfd` says (Linux 5.11+, userfaultfd(2)).
pub const UFFD_USER_MODE_ONLY: u64 = 1;
/// `UFFD_API` (linux/userfaultfd.h).
const UFFD_API: u64 = 0xAA;
/// `UFFDIO_API`: `_IOWR(0xAA, 0x3F, struct uffdio_api)` (24 bytes).
const UFFDIO_API: u64 = 0xC018_AA3F;
/// `UFFDIO_REGISTER`: `_IOWR(0xAA, 0x00, struct uffdio_register)` (32 bytes).
const UFFDIO_REGISTER: u64 = 0xC020_AA00;
/// `UFFDIO_UNREGISTER`: `_IOR(0xAA, 0x01, struct uffdio_range)` (16 bytes).
const UFFDIO_UNREGISTER: u64 = 0x8010_AA01;
/// `UFFDIO_COPY`: `_IOWR(0xAA, 0x03, struct uffdio_copy)` (40 bytes).
const UFFDIO_COPY: u64 = 0xC028_AA03;
/// `UFFDIO_REGISTER_MODE_MISSING`.
const MODE_MISSING: u64 = 1;

/// A userfaultfd (of some task's memory) held by criu.
#[derive(Debug)]
pub struct Userfaultfd(OwnedFd);

impl Userfaultfd {
    /// Take `fd`, a userfaultfd, and do the `UFFDIO_API` handshake with no
    /// extra features.
    ///
    /// Errors: the ioctl's errno (e.g. `EINVAL`: not a userfaultfd).
    pub fn new(fd: OwnedFd) -> std::io::Result<Userfaultfd> {
        let u = Userfaultfd(fd);
        let mut api = [UFFD_API, 0, 0];
        u.ioctl(UFFDIO_API, api.as_mut_ptr().cast())?;
        Ok(u)
    }

    /// `ioctl(fd, req, arg)`.
    fn ioctl(&self, req: u64, arg: *mut libc::c_void) -> std::io::Result<()> {
        // SAFETY: every caller passes a userfaultfd request with `arg`
        // pointing at a live `struct uffdio_*` of the size the request
        // encodes; the kernel reads and writes only that.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), req as _, arg) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Register `len` bytes at `start` (page aligned, whole VMAs of the
    /// task) for missing-page handling (`UFFDIO_REGISTER_MODE_MISSING`).
    ///
    /// Errors: the errno (`EINVAL`: a range not of anonymous or shmem
    /// memory, or not covered by VMAs).
    pub fn register(&self, start: u64, len: u64) -> std::io::Result<()> {
        let mut reg = [start, len, MODE_MISSING, 0];
        self.ioctl(UFFDIO_REGISTER, reg.as_mut_ptr().cast())
    }

    /// `UFFDIO_UNREGISTER` of a range [`Userfaultfd::register`]ed before.
    ///
    /// Errors: the errno.
    pub fn unregister(&self, start: u64, len: u64) -> std::io::Result<()> {
        let mut range = [start, len];
        self.ioctl(UFFDIO_UNREGISTER, range.as_mut_ptr().cast())
    }

    /// `UFFDIO_COPY` of the whole of `src` to `dst` in the task: the
    /// kernel allocates each missing page and copies into it. Returns the
    /// bytes copied; the error, if any, says why it stopped early
    /// (`EEXIST`: a page already present; `EFAULT`: the file was cut
    /// short).
    pub fn copy(&self, dst: u64, src: &FileWindow) -> (u64, Option<std::io::Error>) {
        let len = src.len as u64;
        let mut c: [u64; 5] = [dst, src.addr as u64, len, 0, 0];
        let r = self.ioctl(UFFDIO_COPY, c.as_mut_ptr().cast());
        // `copy`, the last field (signed): bytes copied or a negative errno.
        let n = (c[4] as i64).max(0) as u64;
        match r {
            Ok(()) if n == len => (len, None),
            Ok(()) => (
                n.min(len),
                Some(std::io::Error::from_raw_os_error(libc::EAGAIN)),
            ),
            Err(e) => (n.min(len), Some(e)),
        }
    }
}

/// A read-only, pre-faulted shared mapping of part of a file in criu
/// (mmap(2), `MAP_SHARED | MAP_POPULATE`), unmapped on drop.
pub struct FileWindow {
    addr: *mut libc::c_void,
    len: usize,
}

impl FileWindow {
    /// `len` bytes (> 0) of `file` from `off` (page aligned).
    ///
    /// Errors: mmap's errno.
    pub fn map(file: &File, off: u64, len: usize) -> std::io::Result<FileWindow> {
        // SAFETY: a new mapping at an address the kernel chooses; it
        // overlaps nothing of ours, and only the kernel reads it
        // ([`Userfaultfd::copy`]): a part of the file cut off after mapping
        // would fault, which the kernel turns into `EFAULT`.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                off as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileWindow { addr, len })
    }
}

impl Drop for FileWindow {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` made.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}
