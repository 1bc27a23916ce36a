//! End-to-end tests of `criu-helper` on real processes. They need root
//! (ptrace of a sibling, clone3 with set_tid) and skip with a message
//! otherwise.

mod common;
use common::*;
use shared_ipc::{
    BatchStep, ErrorKind, PageRun, ReleaseMode, Request, Response, HELLO_MAGIC, MAX_BATCH_STEPS,
    PROTOCOL_VERSION,
};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root (ptrace and clone3 set_tid)");
    false
}

impl Helper {
    fn start() -> Helper {
        Helper::spawn(Command::new(env!("CARGO_BIN_EXE_criu-helper")))
    }

    fn hello(&mut self) {
        let r = self.call(Request::Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
        });
        assert!(
            matches!(
                r,
                Response::Hello {
                    version: PROTOCOL_VERSION,
                    caller_uid: 0
                }
            ),
            "{r:?}"
        );
    }

    fn wait_exit(mut self) -> ExitStatus {
        drop(self.chan);
        self.child.wait().unwrap()
    }
}

fn sleeper() -> Child {
    let c = Command::new("sleep").arg("100").spawn().unwrap();
    // Let it reach nanosleep.
    wait_for(|| proc_state(c.id() as i32) == Some('S'));
    c
}

#[test]
fn seize_inject_dump_and_resume() {
    if !is_root() {
        return;
    }
    let mut sleep = sleeper();
    let pid = sleep.id() as i32;
    let mut h = Helper::start();
    h.hello();
    assert_eq!(h.call(Request::Seize { pid }), Response::Ok);
    assert_eq!(proc_state(pid), Some('t'));
    assert_eq!(
        h.call(Request::Seize { pid }),
        Response::Error {
            kind: ErrorKind::AlreadyTraced,
            errno: 0
        }
    );
    let Response::Regs { regs, xstate } = h.call(Request::GetRegs { pid }) else {
        panic!("no regs")
    };
    assert!(regs.rip != 0 && !xstate.is_empty());
    let Response::Sigmask(mask) = h.call(Request::GetSigmask { pid }) else {
        panic!("no mask")
    };
    // No gadget yet.
    assert!(matches!(
        h.call(Request::Syscall {
            pid,
            nr: 39,
            args: [0; 6]
        }),
        Response::Error {
            kind: ErrorKind::BadGadget,
            ..
        }
    ));
    let (gadget, vdso) = vdso_gadget(&mut h, pid);
    // The vdso starts with "\x7fELF", not a syscall instruction.
    assert!(matches!(
        h.call(Request::SetGadget { pid, addr: vdso }),
        Response::Error {
            kind: ErrorKind::BadGadget,
            ..
        }
    ));
    assert_eq!(
        h.call(Request::SetGadget { pid, addr: gadget }),
        Response::Ok
    );
    assert_eq!(
        h.call(Request::SetSigmask {
            pid,
            mask: u64::MAX
        }),
        Response::Ok
    );

    assert_eq!(h.syscall(pid, 39, [0; 6]), i64::from(pid));
    let addr = h.syscall(pid, 9, [0, 4096, 3, 0x22, u64::MAX, 0]);
    assert!(addr > 0 && addr % 4096 == 0, "mmap returned {addr}");
    let addr = addr as u64;
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(
        h.call(Request::WriteMemory {
            pid,
            addr,
            data: data.clone()
        }),
        Response::Ok
    );
    assert_eq!(
        h.call(Request::ReadMemory {
            pid,
            addr,
            len: 4096
        }),
        Response::Memory(data.clone())
    );
    let mut image = tempfile::tempfile().unwrap();
    let runs = vec![PageRun { addr, len: 4096 }];
    assert_eq!(
        h.call_fds(
            Request::DumpPages {
                pid,
                runs: runs.clone()
            },
            &[image.as_fd()]
        ),
        Response::PagesWritten(4096)
    );
    // A PROT_NONE page still dumps (through /proc/PID/mem).
    assert_eq!(h.syscall(pid, 10, [addr, 4096, 0, 0, 0, 0]), 0);
    assert_eq!(
        h.call_fds(Request::DumpPages { pid, runs }, &[image.as_fd()]),
        Response::PagesWritten(4096)
    );
    let mut got = Vec::new();
    image.seek(SeekFrom::Start(0)).unwrap();
    image.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 8192);
    assert_eq!(&got[..4096], &data[..]);
    assert_eq!(&got[4096..], &data[..]);
    // DumpPages needs exactly one descriptor.
    assert!(matches!(
        h.call(Request::DumpPages {
            pid,
            runs: vec![PageRun { addr, len: 4096 }]
        }),
        Response::Error {
            kind: ErrorKind::BadRequest,
            ..
        }
    ));
    assert_eq!(h.syscall(pid, 11, [addr, 4096, 0, 0, 0, 0]), 0);

    assert_eq!(
        h.call(Request::Release {
            pid,
            how: ReleaseMode::Resume
        }),
        Response::Ok
    );
    assert_eq!(
        h.call(Request::GetRegs { pid }),
        Response::Error {
            kind: ErrorKind::NotTraced,
            errno: 0
        }
    );
    assert!(h.wait_exit().success());

    assert!(
        wait_for(|| proc_state(pid) == Some('S')),
        "sleep not sleeping"
    );
    let sigblk = status_field(pid, "SigBlk:").unwrap();
    assert_eq!(u64::from_str_radix(&sigblk, 16).unwrap(), mask);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(sleep.wait().unwrap().signal(), Some(libc::SIGTERM));
}

#[test]
fn syscall_batch_runs_in_order_and_stops_at_the_first_error() {
    if !is_root() {
        return;
    }
    let mut sleep = sleeper();
    let pid = sleep.id() as i32;
    let mut other = sleeper();
    let other_pid = other.id() as i32;
    let mut h = Helper::start();
    h.hello();
    assert_eq!(h.call(Request::Seize { pid }), Response::Ok);
    let Response::Sigmask(mask) = h.call(Request::GetSigmask { pid }) else {
        panic!("no mask")
    };
    let (gadget, _) = vdso_gadget(&mut h, pid);
    assert_eq!(
        h.call(Request::SetGadget { pid, addr: gadget }),
        Response::Ok
    );
    let call = |nr: i64, args: [u64; 6]| BatchStep::Syscall {
        nr: nr as u64,
        args,
    };
    let getpid = call(libc::SYS_getpid, [0; 6]);
    let mmap = call(libc::SYS_mmap, [0, 4096, 3, 0x22, u64::MAX, 0]);
    let Response::BatchResults(r) = h.call(Request::SyscallBatch {
        pid,
        steps: vec![getpid.clone(), mmap],
    }) else {
        panic!("no batch results")
    };
    assert_eq!(r.len(), 2);
    assert_eq!(r[0], i64::from(pid));
    assert!(r[1] > 0 && r[1] % 4096 == 0, "mmap returned {}", r[1]);
    let addr = r[1] as u64;

    // A write, then a call that reads it (write(2) of the bytes to
    // /dev/null), a failing close, and a call after it that must not run
    // (an munmap of the page, which stays readable below).
    let data = b"batched bytes".to_vec();
    let steps = vec![
        BatchStep::Write {
            addr,
            data: data.clone(),
        },
        getpid.clone(),
        call(libc::SYS_close, [u64::MAX, 0, 0, 0, 0, 0]),
        call(libc::SYS_munmap, [addr, 4096, 0, 0, 0, 0]),
    ];
    assert_eq!(
        h.call(Request::SyscallBatch { pid, steps }),
        Response::BatchResults(vec![0, i64::from(pid), -i64::from(libc::EBADF)])
    );
    assert_eq!(
        h.call(Request::ReadMemory {
            pid,
            addr,
            len: data.len() as u32
        }),
        Response::Memory(data)
    );

    // Registers and mask set by batch steps, read back alone.
    let Response::Regs { regs, .. } = h.call(Request::GetRegs { pid }) else {
        panic!("no regs")
    };
    let mut marked = regs;
    marked.r12 = 0x5a5a_5a5a;
    assert_eq!(
        h.call(Request::SyscallBatch {
            pid,
            steps: vec![
                BatchStep::SetRegs {
                    regs: marked,
                    xstate: None
                },
                BatchStep::SetSigmask { mask: 0x1234 },
            ],
        }),
        Response::BatchResults(vec![0, 0])
    );
    let Response::Regs { regs: got, .. } = h.call(Request::GetRegs { pid }) else {
        panic!("no regs")
    };
    assert_eq!(got, marked);
    assert_eq!(
        h.call(Request::GetSigmask { pid }),
        Response::Sigmask(0x1234)
    );

    // Hostile batches: each refused, the helper serving on.
    let refused = |r: Response, kind: ErrorKind| {
        assert!(
            matches!(r, Response::Error { kind: k, .. } if k == kind),
            "{r:?}"
        );
    };
    refused(
        h.call(Request::SyscallBatch {
            pid,
            steps: vec![getpid.clone(); MAX_BATCH_STEPS + 1],
        }),
        ErrorKind::BadRequest,
    );
    refused(
        h.call(Request::SyscallBatch {
            pid: -pid,
            steps: vec![getpid.clone()],
        }),
        ErrorKind::BadRequest,
    );
    refused(
        h.call(Request::SyscallBatch {
            pid,
            steps: vec![BatchStep::Write {
                addr: shared_ipc::TASK_SIZE,
                data: vec![0],
            }],
        }),
        ErrorKind::BadRequest,
    );
    refused(
        h.call(Request::SyscallBatch {
            pid,
            steps: vec![BatchStep::SetRegs {
                regs: marked,
                xstate: Some(vec![0; shared_ipc::MAX_XSTATE + 1]),
            }],
        }),
        ErrorKind::BadRequest,
    );
    // A register set the kernel refuses (a non-canonical instruction
    // pointer is fine for it, a code selector of ring 0 is not) fails the
    // batch with Regs after the steps before it were done.
    let mut bad = marked;
    bad.cs = 0;
    refused(
        h.call(Request::SyscallBatch {
            pid,
            steps: vec![
                BatchStep::SetSigmask { mask: 0x4021 },
                BatchStep::SetRegs {
                    regs: bad,
                    xstate: None,
                },
                BatchStep::SetSigmask { mask: 0x9999 },
            ],
        }),
        ErrorKind::Regs,
    );
    assert_eq!(
        h.call(Request::GetSigmask { pid }),
        Response::Sigmask(0x4021)
    );
    // A live task this helper does not trace is not touched.
    refused(
        h.call(Request::SyscallBatch {
            pid: other_pid,
            steps: vec![call(libc::SYS_exit, [3, 0, 0, 0, 0, 0])],
        }),
        ErrorKind::NotTraced,
    );
    assert_eq!(proc_state(other_pid), Some('S'));
    assert_eq!(
        h.call(Request::SyscallBatch {
            pid,
            steps: vec![call(libc::SYS_munmap, [addr, 4096, 0, 0, 0, 0])],
        }),
        Response::BatchResults(vec![0])
    );

    assert_eq!(
        h.call(Request::Release {
            pid,
            how: ReleaseMode::Resume
        }),
        Response::Ok
    );
    assert!(h.wait_exit().success());
    assert!(
        wait_for(|| proc_state(pid) == Some('S')),
        "sleep not sleeping"
    );
    let sigblk = status_field(pid, "SigBlk:").unwrap();
    assert_eq!(u64::from_str_radix(&sigblk, 16).unwrap(), mask);
    for c in [&mut sleep, &mut other] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

#[test]
fn interrupted_sleep_finishes_normally() {
    if !is_root() {
        return;
    }
    // Seized inside clock_nanosleep, then a syscall injected: on release the
    // helper must restart the sleep (restart_syscall), not make it fail.
    let mut sleep = Command::new("sleep").arg("1").spawn().unwrap();
    let pid = sleep.id() as i32;
    let started = Instant::now();
    assert!(wait_for(|| proc_state(pid) == Some('S')));
    let mut h = Helper::start();
    h.hello();
    assert_eq!(h.call(Request::Seize { pid }), Response::Ok);
    let (gadget, _) = vdso_gadget(&mut h, pid);
    assert_eq!(
        h.call(Request::SetGadget { pid, addr: gadget }),
        Response::Ok
    );
    assert_eq!(h.syscall(pid, 39, [0; 6]), i64::from(pid));
    assert_eq!(
        h.call(Request::Release {
            pid,
            how: ReleaseMode::Resume
        }),
        Response::Ok
    );
    assert!(h.wait_exit().success());
    assert!(sleep.wait().unwrap().success());
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(950), "slept only {took:?}");
}

#[test]
fn create_stub_with_chosen_pid() {
    if !is_root() {
        return;
    }
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let first = (pid_max / 4 * 3).max(300);
    let pid = (first..pid_max)
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let mut h = Helper::start();
    h.hello();
    let null = std::fs::File::open("/dev/null").unwrap();
    // Descriptor count must match.
    assert!(matches!(
        h.call(Request::CreateStub { pid, fds: vec![0] }),
        Response::Error {
            kind: ErrorKind::BadRequest,
            ..
        }
    ));
    let r = h.call_fds(Request::CreateStub { pid, fds: vec![0] }, &[null.as_fd()]);
    let Response::Stub { gadget } = r else {
        panic!("{r:?}")
    };
    assert!(gadget != 0);
    assert_eq!(
        status_field(pid, "PPid:").unwrap(),
        h.child.id().to_string()
    );
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(fds, vec!["0".to_string()]);
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
        std::path::PathBuf::from("/dev/null")
    );
    assert_eq!(h.syscall(pid, 39, [0; 6]), i64::from(pid));
    // The same PID again is taken.
    let null2 = std::fs::File::open("/dev/null").unwrap();
    assert!(matches!(
        h.call_fds(Request::CreateStub { pid, fds: vec![0] }, &[null2.as_fd()]),
        Response::Error {
            kind: ErrorKind::AlreadyTraced,
            ..
        }
    ));
    // A PID in use by someone else: clone3 says EEXIST.
    let busy = std::process::id() as i32;
    assert_eq!(
        h.call_fds(
            Request::CreateStub {
                pid: busy,
                fds: vec![0]
            },
            &[null2.as_fd()]
        ),
        Response::Error {
            kind: ErrorKind::Clone,
            errno: libc::EEXIST
        }
    );
    assert_eq!(
        h.call(Request::Release {
            pid,
            how: ReleaseMode::Kill
        }),
        Response::Ok
    );
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(h.wait_exit().success());
}

#[test]
fn hostile_frame_ends_helper_and_frees_target() {
    if !is_root() {
        return;
    }
    let mut sleep = sleeper();
    let pid = sleep.id() as i32;
    let mut h = Helper::start();
    h.hello();
    assert_eq!(h.call(Request::Seize { pid }), Response::Ok);
    assert_eq!(proc_state(pid), Some('t'));
    h.chan
        .send_raw_for_test(&[3, 0, 0, 0, 0xff, 0xff, 0xff])
        .unwrap();
    let status = h.wait_exit();
    assert!(!status.success(), "helper exited with {status:?}");
    let st = proc_state(pid).unwrap();
    assert!(st != 't' && st != 'T', "target left in state {st}");
    let _ = sleep.kill();
    let _ = sleep.wait();
}

#[test]
fn requests_before_hello_are_refused() {
    if !is_root() {
        return;
    }
    let mut h = Helper::start();
    assert_eq!(
        h.call(Request::GetRegs { pid: 1 }),
        Response::Error {
            kind: ErrorKind::BadRequest,
            errno: 0
        }
    );
    assert!(!h.wait_exit().success());
    let mut h = Helper::start();
    assert_eq!(
        h.call(Request::Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION + 1
        }),
        Response::Error {
            kind: ErrorKind::Version,
            errno: 0
        }
    );
    assert!(!h.wait_exit().success());
}

#[test]
fn refuses_to_start_without_a_channel() {
    let out = Command::new(env!("CARGO_BIN_EXE_criu-helper"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}
