//! The one-copy page path of a dump (the task vmsplices its pages into pipes
//! of its own, criu splices them into the image): it is used, it leaves the
//! task's descriptors exactly as they were, and pages of a mapping the task
//! cannot read (`PROT_NONE`, which vmsplice cannot take) still reach the
//! image through the helper's copy, in order with the others.

use criu_tests::*;
use std::process::Command;
use std::time::Duration;

/// 16 MiB of shared anonymous memory, page i holding i in its first word,
/// whose middle 4 MiB are then made `PROT_NONE`; 8 MiB of private memory
/// the same way. Prints the two addresses, then sleeps.
const PROGRAM: &str = r#"
import ctypes, mmap, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
out = []
for flags, size in ((0x01 | 0x20, 16 << 20), (0x02 | 0x20, 8 << 20)):
    a = libc.mmap(None, size, 3, flags, -1, 0)
    for i in range(0, size, 4096):
        ctypes.c_uint64.from_address(a + i).value = i | 1
    assert libc.mprotect(ctypes.c_void_p(a + size // 4), ctypes.c_size_t(size // 4), 0) == 0
    out.append(f"{a:#x}:{size}")
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(" ".join(out) + "\n")
import os
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(0.05)
"#;

fn regions(path: &std::path::Path) -> Option<Vec<(u64, u64)>> {
    let text = read(path)?;
    text.split_whitespace()
        .map(|r| {
            let (a, s) = r.split_once(':')?;
            Some((
                u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()?,
                s.parse().ok()?,
            ))
        })
        .collect()
}

/// Pages of `(addr, size)` in `pid` that do not hold their index.
fn bad_pages(pid: i32, (addr, size): (u64, u64)) -> usize {
    pages_not_holding_their_offset(pid, addr, size)
}

#[test]
fn pages_go_through_the_task_pipe_and_unreadable_ones_are_copied() {
    let Some(t) = Test::new("page_pipe") else {
        return;
    };
    let file = t.work().join("regions.txt");
    let pid = t
        .spawn_target(Command::new("python3").arg("-c").arg(PROGRAM).arg(&file))
        .id() as i32;
    if !wait_for(Duration::from_secs(20), || regions(&file).is_some()) {
        t.fail(&format!(
            "python3 did not map its memory: {}",
            describe(pid)
        ));
    }
    let regs = regions(&file).unwrap();

    let fds_before = fd_links(pid);
    t.dump(pid, &["-R"]);
    t.assert_running_untouched(pid, "after dump -R");
    let fds_after = fd_links(pid);
    if fds_after != fds_before {
        t.fail(&format!(
            "descriptors changed by dump -R: {fds_before:?} -> {fds_after:?}"
        ));
    }
    let log = read(&t.images().join("dump.log")).unwrap_or_default();
    if !log.contains("bytes in the task") || log.contains("pipe page path failed") {
        t.fail("the dump did not use the pipe page path (see dump.log)");
    }

    std::fs::remove_dir_all(t.images()).expect("clean images");
    std::fs::create_dir_all(t.images()).expect("images dir");
    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    // 24 MiB: striped over two files, the unreadable pieces of both copied
    // by the helper into their places.
    for name in [format!("pages-{pid}.img"), format!("pages-{pid}.1.img")] {
        let len = std::fs::metadata(t.images().join(&name)).map_or(0, |m| m.len());
        if len < 8 << 20 {
            t.fail(&format!("{name} holds {len} bytes, expected about 12 MiB"));
        }
    }
    t.restore_detached(pid, &[]);
    for r in regs {
        let bad = bad_pages(pid, r);
        if bad != 0 {
            t.fail(&format!(
                "{bad} pages of {:#x}+{} differ after restore",
                r.0, r.1
            ));
        }
    }
    kill_and_reap(pid);
}
