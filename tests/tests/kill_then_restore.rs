//! A dump kills the tree without waiting for the kernel to free its memory;
//! a restore started at once finds the dumped PID still held by the dying
//! task (or by its zombie, until its parent reaps it) and must wait for it,
//! not refuse. The target holds 256 MiB so that freeing it takes a while;
//! the test passes whichever state the PID is in when the restore looks.

use criu_tests::*;
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 256 * MIB;

/// A parent that reaps every child as soon as it ends, and its child, in a
/// session of its own, with 256 MiB of private anonymous memory (page i
/// holds i | 1 in its first word). The child writes "PID ADDR COUNTER" to
/// argv[1] every 50 ms.
const PROGRAM: &str = r#"
import ctypes, os, sys, time
size = int(sys.argv[2])
if os.fork() == 0:
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    a = libc.mmap(None, size, 3, 0x02 | 0x20, -1, 0)
    for i in range(0, size, 4096):
        ctypes.c_uint64.from_address(a + i).value = i | 1
    n = 0
    while True:
        n += 1
        with open(sys.argv[1] + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {a} {n}\n")
        os.replace(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(0.05)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.05)
"#;

/// The child's pid, the address of its region and its counter.
fn state(path: &std::path::Path) -> Option<(i32, u64, u64)> {
    let text = read(path)?;
    let mut it = text.split_whitespace();
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

/// Pages of the region at `addr` in `pid` that do not hold their index.
fn bad_pages(pid: i32, addr: u64) -> usize {
    pages_not_holding_their_offset(pid, addr, SIZE)
}

#[test]
fn restore_right_after_a_dump_of_256_mib_waits_for_the_dying_task() {
    let Some(t) = Test::new("kill_then_restore") else {
        return;
    };
    become_subreaper();
    let file = t.work().join("state");
    let parent = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(PROGRAM)
                .arg(&file)
                .arg(SIZE.to_string()),
        )
        .id() as i32;
    let mut seen = None;
    if !wait_for(Duration::from_secs(30), || {
        seen = state(&file);
        seen.is_some_and(|(_, _, n)| n >= 3)
    }) {
        t.fail(&format!(
            "the child of python3 {parent} did not start counting"
        ));
    }
    let (pid, addr, _) = seen.unwrap();
    t.track(pid);

    t.dump(pid, &[]);
    let (_, _, at_dump) = state(&file).expect("state after the dump");
    // At once: the dumped task may still be freeing its 256 MiB, or be a
    // zombie its parent has not reaped yet, or be gone.
    t.restore_detached(pid, &[]);

    let mut now = 0;
    if !wait_for(Duration::from_secs(10), || {
        now = state(&file).map_or(0, |(_, _, n)| n);
        now > at_dump + 2
    }) {
        t.fail(&format!(
            "the restored process does not count on (still {now}, {at_dump} at dump): {}",
            describe(pid)
        ));
    }
    let bad = bad_pages(pid, addr);
    if bad != 0 {
        t.fail(&format!(
            "{bad} of the {} restored pages do not hold their index",
            SIZE / 4096
        ));
    }
    kill_and_reap(pid);
    kill_and_reap(parent);
}
