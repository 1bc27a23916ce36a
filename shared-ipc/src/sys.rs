//! The one place in this crate that needs `unsafe`.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Take ownership of a descriptor the kernel just installed in this process
/// from an `SCM_RIGHTS` message (see unix(7)).
pub(crate) fn own_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel created this descriptor for us while receiving the
    // message; no other object in this process refers to it yet, so taking
    // sole ownership cannot double-close anything.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
