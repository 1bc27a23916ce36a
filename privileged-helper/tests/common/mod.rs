//! What the helper's test files share: a helper spawned on a socketpair
//! with its channel at descriptor 3, and small /proc readers.

#![allow(dead_code)] // each test file uses its own subset

use shared_ipc::{seqpacket_pair, Channel, Request, Response, HELPER_CHANNEL_FD};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A running helper and the frontend's end of its channel.
pub struct Helper {
    pub child: Child,
    pub chan: Channel<Request, Response>,
}

impl Helper {
    /// Spawn `cmd` (a `criu-helper`, with whatever uid or limits the caller
    /// set on it) with the other end of a new socketpair at descriptor 3.
    pub fn spawn(mut cmd: Command) -> Helper {
        let (ours, theirs) = seqpacket_pair().unwrap();
        let raw = theirs.as_raw_fd();
        // SAFETY: the closure only makes async-signal-safe calls (dup2,
        // fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let r = if raw == HELPER_CHANNEL_FD {
                    libc::fcntl(raw, libc::F_SETFD, 0)
                } else {
                    libc::dup2(raw, HELPER_CHANNEL_FD)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(theirs);
        Helper {
            child,
            chan: Channel::new(ours),
        }
    }

    pub fn call(&mut self, req: Request) -> Response {
        self.call_fds(req, &[])
    }

    pub fn call_fds(&mut self, req: Request, fds: &[BorrowedFd<'_>]) -> Response {
        self.chan.send(&req, fds).unwrap();
        self.chan.recv().unwrap().0
    }

    /// An injected system call that must get an answer.
    pub fn syscall(&mut self, pid: i32, nr: u64, args: [u64; 6]) -> i64 {
        match self.call(Request::Syscall { pid, nr, args }) {
            Response::SyscallResult(r) => r,
            r => panic!("syscall {nr}: {r:?}"),
        }
    }
}

/// The value of `key` (with its colon) in /proc/PID/status.
pub fn status_field(pid: i32, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

/// The state letter of a task.
pub fn proc_state(pid: i32) -> Option<char> {
    status_field(pid, "State:").and_then(|v| v.chars().next())
}

/// Poll `cond` for up to 5 s.
pub fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A `syscall` instruction in the target's vdso, and the vdso's start.
pub fn vdso_gadget(h: &mut Helper, pid: i32) -> (u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps.lines().find(|l| l.ends_with("[vdso]")).unwrap();
    let range = line.split_whitespace().next().unwrap();
    let (a, b) = range.split_once('-').unwrap();
    let start = u64::from_str_radix(a, 16).unwrap();
    let end = u64::from_str_radix(b, 16).unwrap();
    let mut bytes = Vec::new();
    let mut addr = start;
    while addr < end {
        let len = (end - addr).min(shared_ipc::MAX_MEM_IO as u64) as u32;
        match h.call(Request::ReadMemory { pid, addr, len }) {
            Response::Memory(m) => bytes.extend_from_slice(&m),
            r => panic!("reading the vdso: {r:?}"),
        }
        addr += u64::from(len);
    }
    let off = bytes.windows(2).position(|w| w == [0x0f, 0x05]).unwrap();
    (start + off as u64, start)
}
