//! One open file description in two processes (inherited across fork) and
//! twice in one process (dup) is one description again after restore: the
//! kernel says so (kcmp(2) `KCMP_FILE`), and the processes see it: the
//! child's writes move the offset the parent reads back.

use criu_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Parent opens `log`, dups it to fd 9, forks. The child appends a line
/// through the shared description every 50 ms; the parent writes, every
/// 50 ms, its own view of the offset (`lseek(fd, 0, SEEK_CUR)`) and the
/// file's size into `state`: with one description they stay equal.
const PROGRAM: &str = r#"
import os, sys, time
log, state = sys.argv[1], sys.argv[2]
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.dup2(fd, 9)
pid = os.fork()
if pid == 0:
    n = 0
    while True:
        n += 1
        os.write(fd, f"line {n}\n".encode())
        time.sleep(0.05)
while True:
    pos = os.lseek(9, 0, os.SEEK_CUR)
    size = os.fstat(9).st_size
    with open(state + ".tmp", "w") as f:
        f.write(f"{pid} {fd} {pos} {size}\n")
    os.replace(state + ".tmp", state)
    time.sleep(0.05)
"#;

fn state(path: &Path) -> Option<(i32, i32, u64, u64)> {
    let text = read(path)?;
    let v: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v.len() == 4).then(|| (v[0] as i32, v[1] as i32, v[2], v[3]))
}

#[test]
fn description_shared_by_fork_and_dup_stays_shared() {
    let Some(t) = Test::new("shared_files") else {
        return;
    };
    let (log, st) = (t.work().join("log.txt"), t.work().join("state.txt"));
    let pid = t
        .spawn_target(
            Command::new("python3")
                .arg("-c")
                .arg(PROGRAM)
                .arg(&log)
                .arg(&st),
        )
        .id() as i32;
    let mut seen = None;
    if !wait_for(Duration::from_secs(20), || {
        seen = state(&st);
        seen.is_some_and(|(_, _, pos, _)| pos > 20)
    }) {
        t.fail(&format!("target did not start: {}", describe(pid)));
    }
    let (child, fd, _, _) = seen.unwrap();
    t.track(child);
    if !same_description(pid, fd, child, fd) || !same_description(pid, fd, pid, 9) {
        t.fail("the target does not share its description before the dump");
    }

    t.dump(pid, &[]);
    reap_dumped(&t, pid);
    // The child, now ours (the tests are a subreaper), was killed too.
    let _ = reap(child, Duration::from_secs(10));
    let at_dump = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);

    t.restore_detached(pid, &[]);
    for (pa, a, pb, b) in [
        (pid, fd, child, fd),
        (pid, fd, pid, 9),
        (child, fd, child, 9),
    ] {
        if !same_description(pa, a, pb, b) {
            t.fail(&format!(
                "after restore pid {pa} fd {a} and pid {pb} fd {b} are not one description: {}",
                describe(pid)
            ));
        }
    }
    // The child keeps appending where it stopped, and the parent's offset
    // follows (one offset); the file never gets a hole or an overwrite.
    let mut last = None;
    if !wait_for(Duration::from_secs(10), || {
        last = state(&st);
        last.is_some_and(|(_, _, pos, size)| pos > at_dump + 20 && pos == size)
    }) {
        t.fail(&format!(
            "after restore the offsets do not move together (dump at {at_dump}, now {last:?}): {}",
            describe(pid)
        ));
    }
    let text = read(&log).unwrap_or_default();
    let nums: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
        .collect();
    if nums.is_empty() || nums.windows(2).any(|w| w[1] != w[0] + 1) || text.contains('\0') {
        t.fail(&format!("log lines not consecutive after restore:\n{text}"));
    }
    kill_and_reap(child);
    kill_and_reap(pid);
}
