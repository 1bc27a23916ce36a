//! The spawner: a child forked at start-up, before the helper sets anything
//! else up, that creates restore stubs on request. Stubs are its clones
//! (clone3(2) with `CLONE_PARENT`, so the helper is their parent), which is
//! why they never inherit whatever the helper installs later (seccomp).
//!
//! It talks to the helper over its own `SOCK_SEQPACKET` pair with the
//! private messages below and exits at end of stream.

use crate::creds::Caller;
use crate::sys::{self, StubCreds, StubFds};
use nix::errno::Errno;
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};
use shared_ipc::{seqpacket_pair, Channel, MAX_FDS_PER_FRAME};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// Helper → spawner. The descriptors travel as `SCM_RIGHTS`.
#[derive(Serialize, Deserialize, Debug)]
pub enum SpawnRequest {
    /// Create a stub with PID `pid`; the i-th descriptor sent goes to `fds[i]`.
    Create {
        /// PID to create.
        pid: i32,
        /// Target descriptor numbers.
        fds: Vec<i32>,
    },
    /// Write `pid - 1` to `/proc/sys/kernel/ns_last_pid`, so the next PID
    /// the kernel hands out is `pid` (if it is free). Answered
    /// `Created(pid)`.
    NextPid {
        /// The wanted PID.
        pid: i32,
    },
}

/// Spawner → helper.
#[derive(Serialize, Deserialize, Debug)]
pub enum SpawnReply {
    /// The stub exists with this PID and is waiting in pause(2).
    Created(i32),
    /// clone3(2) or the request failed with this errno.
    Failed(i32),
}

/// The helper's handle on its spawner.
pub struct Spawner {
    chan: Channel<SpawnRequest, SpawnReply>,
    pid: Pid,
}

impl Spawner {
    /// Fork the spawner. Must run while the helper is single-threaded and
    /// before it takes ownership of the channel descriptor.
    ///
    /// For a non-root `caller` (setuid mode) the spawner keeps only the
    /// capabilities it needs and every stub drops to the caller's
    /// credentials before it waits for the frontend.
    pub fn start(caller: &Caller) -> Result<Spawner, Errno> {
        let (ours, theirs) = seqpacket_pair()?;
        match sys::fork()? {
            ForkResult::Parent { child } => {
                drop(theirs);
                Ok(Spawner {
                    chan: Channel::new(ours),
                    pid: child,
                })
            }
            ForkResult::Child => {
                drop(ours);
                sys::close_channel_fd_in_child();
                let creds = if caller.is_root() {
                    None
                } else {
                    if crate::lockdown::spawner_caps().is_err() {
                        std::process::exit(crate::EXIT_START);
                    }
                    Some(caller.clone())
                };
                serve(theirs, creds.as_ref());
                std::process::exit(0)
            }
        }
    }

    /// The spawner's PID (the frontend may not seize it).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Ask for a stub with PID `pid` and descriptors `fds` placed at
    /// `targets`. Returns the errno of the failure.
    pub fn create(&mut self, pid: Pid, targets: &[i32], fds: &[OwnedFd]) -> Result<(), Errno> {
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let req = SpawnRequest::Create {
            pid: pid.as_raw(),
            fds: targets.to_vec(),
        };
        self.chan.send(&req, &borrowed).map_err(|_| Errno::EPIPE)?;
        match self.chan.recv() {
            Ok((SpawnReply::Created(p), extra)) if p == pid.as_raw() && extra.is_empty() => Ok(()),
            Ok((SpawnReply::Failed(e), _)) => Err(Errno::from_raw(e)),
            _ => Err(Errno::EPROTO),
        }
    }

    /// Make `pid` the next PID the kernel hands out (see
    /// [`SpawnRequest::NextPid`]). Returns the errno of the failure.
    pub fn next_pid(&mut self, pid: Pid) -> Result<(), Errno> {
        let req = SpawnRequest::NextPid { pid: pid.as_raw() };
        self.chan.send(&req, &[]).map_err(|_| Errno::EPIPE)?;
        match self.chan.recv() {
            Ok((SpawnReply::Created(p), extra)) if p == pid.as_raw() && extra.is_empty() => Ok(()),
            Ok((SpawnReply::Failed(e), _)) => Err(Errno::from_raw(e)),
            _ => Err(Errno::EPROTO),
        }
    }

    /// Close the channel (the spawner exits on end of stream) and reap it.
    pub fn shutdown(self) {
        let pid = self.pid;
        drop(self.chan);
        let _ = sys::waitpid_all(pid);
    }
}

/// The spawner's loop: one stub per request, until end of stream.
fn serve(sock: OwnedFd, creds: Option<&Caller>) {
    let sock_fd = sock.as_raw_fd();
    let mut chan: Channel<SpawnReply, SpawnRequest> = Channel::new(sock);
    let helper = nix::unistd::getppid();
    while let Ok((req, received)) = chan.recv() {
        let result = match req {
            SpawnRequest::Create { pid, fds: targets } => {
                create(pid, &targets, &received, sock_fd, helper, creds)
            }
            SpawnRequest::NextPid { pid } if received.is_empty() => set_last_pid(pid),
            SpawnRequest::NextPid { .. } => Err(Errno::EINVAL),
        };
        let reply = match result {
            Ok(child) => SpawnReply::Created(child.as_raw()),
            Err(e) => SpawnReply::Failed(e as i32),
        };
        drop(received);
        if chan.send(&reply, &[]).is_err() {
            break;
        }
    }
}

/// `/proc/sys/kernel/ns_last_pid` = `pid - 1` (needs
/// `CAP_CHECKPOINT_RESTORE`, which the spawner keeps).
fn set_last_pid(pid: i32) -> Result<Pid, Errno> {
    if pid <= 1 {
        return Err(Errno::EINVAL);
    }
    std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", pid - 1))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    Ok(Pid::from_raw(pid))
}

fn create(
    pid: i32,
    targets: &[i32],
    received: &[OwnedFd],
    sock_fd: RawFd,
    helper: Pid,
    creds: Option<&Caller>,
) -> Result<Pid, Errno> {
    if pid <= 0
        || targets.len() != received.len()
        || targets.len() > MAX_FDS_PER_FRAME
        || targets.iter().any(|&t| !(0..1 << 20).contains(&t))
    {
        return Err(Errno::EINVAL);
    }
    let raw: Vec<RawFd> = received.iter().map(|f| f.as_raw_fd()).collect();
    let mut sorted = targets.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != targets.len() {
        return Err(Errno::EINVAL);
    }
    // Open now: 0, 1, 2, the socket and the received descriptors.
    let base = raw
        .iter()
        .chain(targets.iter())
        .copied()
        .chain([2, sock_fd])
        .max()
        .unwrap_or(2)
        + 1;
    let fds = StubFds {
        received: &raw,
        targets,
        sorted: &sorted,
        base,
        creds: creds.map(|c| StubCreds {
            uid: c.uid,
            gid: c.gid,
            groups: &c.groups,
        }),
    };
    sys::clone_stub(Pid::from_raw(pid), &fds, helper)
}
