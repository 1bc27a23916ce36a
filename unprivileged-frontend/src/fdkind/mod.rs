//! Kinds of open file description beyond regular files and devices, one
//! module each. A kind is dumped from a duplicate of the task's descriptor
//! that criu holds (pidfd_getfd(2)) and restored by creating the open file
//! description in criu itself, which then passes it to the restored task
//! (`SCM_RIGHTS`, see unix(7)); state that only the task can set (epoll
//! registrations by descriptor number, owners, POSIX locks) is set by
//! injected calls once all of the task's descriptors are in place.

pub mod epoll;
pub mod event;
pub mod inet;
pub mod inotify;
pub mod memfd;
pub mod pidfd;
pub mod pipe;
pub mod unix;
